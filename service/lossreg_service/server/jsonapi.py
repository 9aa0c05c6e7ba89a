"""The ``/v1`` JSON API's tensor codec now lives in `lossreg.protocol.v1`, shared with the
client; these names stay importable from here."""

from __future__ import annotations

from lossreg.protocol.v1 import Form, decode_value, encode_value

__all__ = ["Form", "decode_value", "encode_value"]

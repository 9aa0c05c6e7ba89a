"""Documented bounds on the shape of a request, checked by the schema before any work.

A request past one of them is refused (400 naming the field) while it is parsed, so no check
downstream ever runs over an unbounded list or echoes an unbounded name.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

__all__ = [
    "MAX_ECHO_CHARS",
    "MAX_NAME_LENGTH",
    "MAX_PARAMETERS",
    "MAX_TENSORS",
    "MAX_TERMS",
    "Name",
    "bounded",
]

MAX_NAME_LENGTH = 256
"""Characters in a loss, input, output, parameter or label name."""
MAX_TENSORS = 64
"""Inputs in one request, and outputs asked for."""
MAX_PARAMETERS = 64
"""Entries of one ``parameters`` / ``params`` object."""
MAX_TERMS = 64
"""Terms of one composition (``POST /v1/evaluate``)."""
MAX_ECHO_CHARS = 200
"""At most this much of a client's text is quoted back in an error body or a log line."""

Name = Annotated[str, StringConstraints(max_length=MAX_NAME_LENGTH)]
"""A name the client chose (tensor, parameter, label): bounded before it is ever echoed."""


def bounded(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"

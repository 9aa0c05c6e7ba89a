"""torch tensors <-> the wire's numpy arrays, for the client and the server alike.

torch is imported inside the functions only, so ``import lossreg.protocol`` never pulls it in
(a caller that holds a tensor has imported torch already). bfloat16 travels as little-endian
``uint16`` words (numpy has no bfloat16), viewed as ``torch.bfloat16`` on arrival; arrays that
are views of a writable body become tensors without a copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .dtypes import TypedArray, datatype_from_torch_name

if TYPE_CHECKING:
    import torch

__all__ = ["array_to_tensor", "tensor_to_array"]


def tensor_to_array(tensor: torch.Tensor, field: str | None = None) -> TypedArray:
    """A host copy (or view) of ``tensor`` as contiguous little-endian values, and its KServe
    datatype.

    Raises:
        InvalidTensor: a dtype the wire cannot carry (complex, quantized...), naming ``field``.
    """
    import torch

    t = tensor.detach()
    datatype = datatype_from_torch_name(str(t.dtype), field)
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view("<u2"), datatype
    return t.numpy(), datatype


def array_to_tensor(array: np.ndarray, datatype: str) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory when it is writable, contiguous and little-endian
    (otherwise copied first: torch must not write into read-only memory)."""
    import torch

    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if datatype == "BF16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)

"""The caller's arrays (torch tensors, NumPy arrays) <-> the wire's numpy views, copying little.

torch is never imported here: a value is a torch tensor only if torch is already imported (a
caller holding a tensor has imported it), so ``import lossreg`` stays light.

Going out, a contiguous CPU tensor or array is sent as a ``memoryview`` of its own memory. Coming
back, the response body is read into one writable ``bytearray`` and each output is a
``np.frombuffer`` view of it, which ``torch.from_numpy`` shares; a copy happens only to move to
the caller's device or dtype.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from .errors import InvalidInput
from .protocol import datatype_from_numpy, torch_name
from .protocol.torch_bridge import array_to_tensor, tensor_to_array

if TYPE_CHECKING:
    import torch

__all__ = ["Origin", "WireArray", "from_wire", "is_torch_tensor", "to_wire"]


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a value came from, so that results go back in the same kind, device and dtype.

    Args:
        kind: ``"torch"`` or ``"numpy"``.
        device: the torch device (``None`` for NumPy).
        dtype: the torch dtype or numpy dtype of the caller's value.
    """

    kind: str
    device: Any = None
    dtype: Any = None


@dataclasses.dataclass(frozen=True)
class WireArray:
    """One tensor ready for the wire.

    Args:
        array: contiguous little-endian values (bfloat16 as ``uint16`` words).
        datatype: the KServe datatype (``FP32``, ``BF16``...).
        origin: the caller's kind, device and dtype.
    """

    array: np.ndarray
    datatype: str
    origin: Origin

    @property
    def dtype_name(self) -> str:
        """The torch dtype name a spec lists (``float32``, ``bfloat16``, ``int64``...)."""
        return torch_name(self.datatype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def is_torch_tensor(value: object) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_wire(name: str, value: Any) -> WireArray:
    """Prepare a caller's tensor, array or number for the wire, without copying if it can.

    A CUDA tensor is copied to the host (the wire needs host bytes); a non-contiguous one is
    made contiguous. Python numbers and lists go through ``np.asarray`` (float64/int64).

    Raises:
        InvalidInput: a value that is not a tensor, array or number.
        InvalidTensor: a dtype the wire cannot carry (complex, strings...).
    """
    if is_torch_tensor(value):
        return _torch_to_wire(name, value)
    if isinstance(value, np.ndarray | np.generic | int | float | bool | list | tuple):
        try:
            given = np.asarray(value)
            array = given if given.flags.c_contiguous else np.ascontiguousarray(given)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"input {name!r} is not a rectangular array: {exc}", field=name
            ) from None
        datatype = datatype_from_numpy(array.dtype, name)
        if datatype == "BF16":
            array = array.view(np.uint16)
        return WireArray(array, datatype, Origin("numpy", None, array.dtype))
    raise InvalidInput(
        f"input {name!r} is a {type(value).__name__}; pass a torch tensor or a NumPy array",
        field=name,
    )


def _torch_to_wire(name: str, tensor: Any) -> WireArray:
    array, datatype = tensor_to_array(tensor, name)
    return WireArray(array, datatype, Origin("torch", tensor.device, tensor.dtype))


def from_wire(array: np.ndarray, datatype: str, origin: Origin, *, cast: bool) -> Any:
    """Turn a decoded output back into the caller's kind, on its device.

    Args:
        array: the output as decoded from the response (a writable view of its body).
        datatype: the output's KServe datatype.
        origin: the caller's value this output belongs to.
        cast: also convert to the caller's dtype (gradients: yes; the loss value: no).
    """
    if origin.kind == "torch":
        t = array_to_tensor(array, datatype)
        return t.to(device=origin.device, dtype=origin.dtype if cast else None)
    if datatype == "BF16":
        array = _numpy_bfloat16(array)
    if cast and array.dtype != origin.dtype:
        array = array.astype(origin.dtype)
    return array


def _numpy_bfloat16(words: np.ndarray) -> np.ndarray:
    """bfloat16 words as ``ml_dtypes.bfloat16`` when it is installed, else exact float32."""
    try:
        import ml_dtypes
    except ImportError:
        from .protocol import bf16_to_float

        return bf16_to_float(words)
    return words.view(ml_dtypes.bfloat16)

"""ONNX tensor element types <-> numpy dtypes, the same with every supported onnx version.

onnx < 1.18 maps BFLOAT16 to float32 (its storage type for ``float_data``), which would make
onnxfix write 4-byte values into a 2-byte tensor. Here bfloat16 is ``ml_dtypes.bfloat16``, and
tensors are built from raw little-endian bytes rather than through ``numpy_helper``
(:func:`le_array`, :func:`le_bytes` and :func:`from_le_bytes`, which :mod:`onnxfix._proto`
re-exports for the rest of onnxfix).
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = [
    "np_dtype",
    "onnx_type",
    "dtype_name",
    "tensor_to_array",
    "array_to_tensor",
    "le_array",
    "le_bytes",
    "from_le_bytes",
]

_TYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.UINT64: np.dtype(np.uint64),
    TensorProto.BOOL: np.dtype(np.bool_),
}
_BY_NAME = {d.name: d for d in _TYPES.values()}
_NAMES = {t: d.name for t, d in _TYPES.items()}  # numpy computes dtype.name on every access
_ONNX = {d: t for t, d in _TYPES.items()}


def np_dtype(data_type: int | str) -> np.dtype:
    """The numpy dtype of an ONNX element type (or of a dtype name such as 'bfloat16')."""
    if isinstance(data_type, str):
        return _BY_NAME[data_type]
    if data_type in _TYPES:
        return _TYPES[data_type]
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def onnx_type(dtype: np.dtype) -> int:
    return _ONNX[np.dtype(dtype)]


def dtype_name(data_type: int) -> str:
    name = _NAMES.get(data_type)
    return name if name is not None else np_dtype(data_type).name


def le_array(array: np.ndarray) -> np.ndarray:
    """``array`` in C order and little-endian, as ONNX stores tensors (itself when it is)."""
    data = np.ascontiguousarray(array)
    little = data.dtype.newbyteorder("<")
    # Compared with the little-endian dtype, not by ``byteorder == ">"``: a big-endian host
    # reports its native order as "=".
    return data if data.dtype == little else data.astype(little)


def le_bytes(array: np.ndarray) -> bytes:
    """``array``'s values as ONNX stores them: C order, little-endian."""
    return le_array(array).tobytes()


def from_le_bytes(data: bytes, dtype: np.dtype, shape: Iterable[int]) -> np.ndarray:
    """The (read-only) array of ``shape`` whose little-endian bytes are ``data``."""
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(tuple(shape))


def tensor_to_array(tensor: TensorProto) -> np.ndarray:
    """The values of an in-memory tensor (raw_data or typed fields) in its own dtype."""
    dtype = np_dtype(tensor.data_type)
    if tensor.HasField("raw_data") and tensor.data_type in _TYPES:
        return from_le_bytes(tensor.raw_data, dtype, tensor.dims)
    # Typed fields, external data, and the types not listed above (float8; int4 and the others
    # that pack several values in a byte) as onnx reads them.
    values = numpy_helper.to_array(tensor)
    if tensor.data_type == TensorProto.BFLOAT16 and values.dtype != dtype:
        return values.astype(np.float32).astype(dtype)  # onnx < 1.18 decodes bfloat16 to float32
    return values


def array_to_tensor(array: np.ndarray, name: str) -> TensorProto:
    """A tensor holding ``array``'s values as raw little-endian bytes."""
    data = le_array(array)
    return onnx.helper.make_tensor(
        name, onnx_type(data.dtype), data.shape, data.tobytes(), raw=True
    )

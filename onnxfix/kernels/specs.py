"""Turn what the user wrote after ``--kernel`` (or ``--bias``) into numbers.

A spec is one of: a ``.npy`` file; ``file.npz:key``; a literal such as
``'[[-1,0,1],[-2,0,2],[-1,0,1]]'``; or a named filter (``sobel-x``, ``gaussian:sigma=1.2``...,
see :mod:`onnxfix.kernels.filters`). Files are read with ``allow_pickle=False``: onnxfix never unpickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfix.arrayfiles import ArrayFileProblem, open_arrays
from onnxfix.errors import KernelSpecError, ModelFileError, param
from onnxfix.kernels import filters

__all__ = [
    "KernelSpec",
    "kernel_spec",
    "parse_kernel_spec",
    "array_spec",
    "load_kernel_bank",
    "load_array",
]


@dataclass(frozen=True)
class KernelSpec:
    """A kernel as the user gave it; :meth:`values` makes the array for one conv."""

    text: str
    array: np.ndarray | None = None  # files and literals
    named: str | None = None  # named filters, sized by the conv

    def values(self, spatial: tuple[int, ...]) -> np.ndarray:
        if self.named is not None:
            return filters.make_named_kernel(self.named, spatial)
        assert self.array is not None
        return self.array


def _numeric(array: np.ndarray, origin: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise KernelSpecError(
            f"{origin} holds {array.dtype} values; a kernel must be a numeric (integer or float) array"
        )
    return array.astype(np.float64)


def load_array(
    path: str | os.PathLike, key: str | None = None, *, what: str = "kernel"
) -> np.ndarray:
    """A numeric array from a ``.npy`` file or one key of an ``.npz`` file, never unpickling,
    its header checked against the file before numpy reads it (:mod:`onnxfix.arrayfiles`)."""
    path = Path(path)
    origin = f"{path}:{key}" if key is not None else str(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {str(path)!r} does not exist")
    try:
        with open_arrays(path) as arrays:
            if arrays.keys is None:
                if key is not None:
                    raise KernelSpecError(
                        f"{str(path)!r} is a .npy file and has no key {key!r}; drop ':{key}'"
                    )
                array = arrays.read()
            elif key is None:
                raise KernelSpecError(
                    f"{what} file {str(path)!r} is an .npz archive; name the array with "
                    f"'{path}:KEY' (keys: {', '.join(arrays.keys) or 'none'})"
                )
            elif key not in arrays.keys:
                raise KernelSpecError(
                    f"{str(path)!r} has no array {key!r}; its keys are: "
                    f"{', '.join(arrays.keys) or 'none'}"
                )
            else:
                array = arrays.read(key)
    except ArrayFileProblem as e:
        if e.pickled:
            raise KernelSpecError(
                f"{what} file {str(path)!r} {e.reason}, which onnxfix never loads; save a plain "
                "numeric array with numpy.save"
            ) from None
        raise ModelFileError(f"{what} file {str(path)!r} {e.reason}") from None
    return _numeric(array, origin)


# A kernel has at most 5 axes (a 3-D conv's weight); deeper nesting is a mistake or an attack.
_MAX_DEPTH = 5


def _shown(text: str) -> str:
    """``text`` for a message: a literal can be as long as the command line allows."""
    return text if len(text) <= 60 else f"{text[:40]}...{text[-12:]}"


def _literal(text: str) -> np.ndarray:
    shown = _shown(text)
    depth = 0
    for char in text:  # before parsing: json recurses once per bracket
        depth += (char == "[") - (char == "]")
        if depth > _MAX_DEPTH:
            raise KernelSpecError(
                f"kernel literal {shown!r} is nested more than {_MAX_DEPTH} deep; a kernel has "
                "at most 5 axes, written like '[[-1,0,1],[-2,0,2],[-1,0,1]]'"
            )
    try:
        # Numbers as floats: an integer of 400 digits is then inf (refused below), not an int
        # too large for float64, nor past Python's limit on digits converted.
        value = json.loads(text, parse_int=float, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError):
        raise KernelSpecError(
            f"kernel literal {shown!r} is not a list of numbers; write it like "
            "'[[-1,0,1],[-2,0,2],[-1,0,1]]'"
        ) from None
    if not _only_numbers(value):
        raise KernelSpecError(
            f"kernel literal {shown!r} holds something other than numbers (true, null, text or "
            "an object); write numbers only, like '[[-1,0,1],[-2,0,2],[-1,0,1]]'"
        )
    try:
        array = np.array(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise KernelSpecError(
            f"kernel literal {shown!r} is not a regular array of numbers (rows of equal length)"
        ) from None
    if array.ndim == 0:
        raise KernelSpecError(
            f"kernel literal {shown!r} is a single number; give a list, e.g. '[1]'"
        )
    if not np.all(np.isfinite(array)):
        raise KernelSpecError(
            f"kernel literal {shown!r} holds a number too large for float64 (about 1.8e308 at "
            "most); kernels must be finite"
        )
    return array


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number onnxfix accepts")  # NaN, Infinity


def _only_numbers(value: object) -> bool:
    if isinstance(value, list):
        return all(_only_numbers(v) for v in value)
    return isinstance(value, float)  # parse_int made every integer a float; bool stays bool


def parse_kernel_spec(text: str) -> KernelSpec:
    """Parse one ``--kernel`` value."""
    stripped = text.strip()
    if not stripped:
        raise KernelSpecError(
            f"{param('kernel')} is empty; give a .npy file, FILE.npz:KEY, a literal or a filter name"
        )
    if stripped[0] in "[-0123456789.":
        return KernelSpec(text, array=_literal(stripped))
    path, _, key = stripped.rpartition(":") if ".npz:" in stripped else (stripped, "", "")
    if stripped.endswith(".npy") or ".npz:" in stripped or stripped.endswith(".npz"):
        return KernelSpec(text, array=load_array(path, key or None))
    if filters.is_named_kernel(stripped):
        filters.parse_named_kernel(stripped)  # validate the parameters now, not per layer
        return KernelSpec(text, named=stripped)
    if Path(stripped).exists():
        raise KernelSpecError(
            f"kernel file {stripped!r} is neither .npy nor .npz; save the kernel with numpy.save"
        )
    names = ", ".join(f.name for f in filters.list_filters())
    raise KernelSpecError(
        f"{param('kernel')} {text!r} is not a .npy file, FILE.npz:KEY, a literal like '[[0,1,0],[1,-4,1],"
        f"[0,1,0]]' or a known filter ({names}); see 'onnxfix kernels'"
    )


def array_spec(array: object, *, what: str = "kernel") -> KernelSpec:
    """A kernel (or bias) the caller holds in memory: a numeric array, copied."""
    if not isinstance(array, np.ndarray):
        raise KernelSpecError(
            f"{param(what)} must be a spec (text), a path or a numpy array, not "
            f"{type(array).__name__}"
        )
    text = f"<array of shape {tuple(array.shape)}>"
    if array.ndim == 0:
        raise KernelSpecError(
            f"{param(what)} {text} is a single number; give an array with the kernel's axes"
        )
    return KernelSpec(text, array=_numeric(np.array(array), f"{what} {text}"))


def kernel_spec(kernel: str | os.PathLike | np.ndarray) -> KernelSpec:
    """A kernel as :func:`onnxfix.set_kernel` takes it: a spec (:func:`parse_kernel_spec`), the
    path of a file, or an array in memory."""
    if isinstance(kernel, str):
        return parse_kernel_spec(kernel)
    if isinstance(kernel, os.PathLike):
        return parse_kernel_spec(os.fspath(kernel))
    return array_spec(kernel)


def load_kernel_bank(path: str | os.PathLike) -> dict[str, KernelSpec]:
    """``--kernels FILE.npz``: one kernel per key, the key being a layer selector."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"kernel file {str(path)!r} does not exist")
    try:
        with open_arrays(path) as arrays:
            keys = arrays.keys
    except ArrayFileProblem as e:
        raise ModelFileError(f"{param('kernels_file')} {str(path)!r} {e.reason}") from None
    if keys is None:
        raise KernelSpecError(
            f"{param('kernels_file')} {str(path)!r} is a single array (.npy); it takes an .npz "
            f"whose keys are layer selectors (numpy.savez(path, conv1=k1, conv2=k2)), or give "
            f"the one kernel with {param('kernel')}"
        )
    if not keys:
        raise KernelSpecError(f"{param('kernels_file')} {str(path)!r} holds no arrays")
    return {key: KernelSpec(f"{path.name}:{key}", array=load_array(path, key)) for key in keys}

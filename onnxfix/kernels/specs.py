"""Turn what the user wrote after ``--kernel`` (or ``--bias``) into numbers.

A spec is one of: a ``.npy`` file; ``file.npz:key``; a literal such as
``'[[-1,0,1],[-2,0,2],[-1,0,1]]'``; or a named filter (``sobel-x``, ``gaussian:sigma=1.2``...,
see :mod:`onnxfix.kernels.filters`). Files are read with ``allow_pickle=False``: onnxfix never unpickles.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfix.errors import KernelSpecError, ModelFileError, param
from onnxfix.kernels import filters

__all__ = ["KernelSpec", "parse_kernel_spec", "load_kernel_bank", "load_array"]


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
    """A numeric array from a ``.npy`` file or one key of an ``.npz`` file, never unpickling."""
    path = Path(path)
    origin = f"{path}:{key}" if key is not None else str(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise KernelSpecError(
                f"{what} file {str(path)!r} holds pickled Python objects, which onnxfix never "
                "loads; save a plain numeric array with numpy.save"
            ) from e
        raise ModelFileError(
            f"{what} file {str(path)!r} is not a readable .npy/.npz file: {e}"
        ) from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFileError(
            f"{what} file {str(path)!r} is not a readable .npy/.npz file: {e}"
        ) from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if key is None:
                raise KernelSpecError(
                    f"{what} file {str(path)!r} is an .npz archive; name the array with "
                    f"'{path}:KEY' (keys: {', '.join(loaded.files) or 'none'})"
                )
            if key not in loaded.files:
                raise KernelSpecError(
                    f"{str(path)!r} has no array {key!r}; its keys are: "
                    f"{', '.join(loaded.files) or 'none'}"
                )
            try:
                array = loaded[key]
            except ValueError as e:
                raise KernelSpecError(
                    f"array {origin!r} holds pickled Python objects, which onnxfix never loads; "
                    "save plain numeric arrays with numpy.savez"
                ) from e
    else:
        if key is not None:
            raise KernelSpecError(
                f"{str(path)!r} is a .npy file and has no key {key!r}; drop ':{key}'"
            )
        array = loaded
    return _numeric(array, origin)


def _literal(text: str) -> np.ndarray:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise KernelSpecError(
            f"kernel literal {text!r} is not a list of numbers; write it like "
            "'[[-1,0,1],[-2,0,2],[-1,0,1]]'"
        ) from None
    try:
        array = np.array(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise KernelSpecError(
            f"kernel literal {text!r} is not a regular array of numbers (rows of equal length)"
        ) from None
    if array.ndim == 0:
        raise KernelSpecError(
            f"kernel literal {text!r} is a single number; give a list, e.g. '[1]'"
        )
    return array


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


def load_kernel_bank(path: str | os.PathLike) -> dict[str, KernelSpec]:
    """``--kernels FILE.npz``: one kernel per key, the key being a layer selector."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"kernel file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as e:
        raise ModelFileError(
            f"{param('kernels_file')} {str(path)!r} is not an .npz archive; write one with numpy.savez"
        ) from e
    if not keys:
        raise KernelSpecError(f"{param('kernels_file')} {str(path)!r} holds no arrays")
    return {key: KernelSpec(f"{path.name}:{key}", array=load_array(path, key)) for key in keys}

"""Training and validation data files (``.npz``), checked against the artifacts' manifest.

One array per model input plus the target, named as make-artifacts reported; read with
``allow_pickle=False``: onnxfix never unpickles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnxfix.errors import TrainingDataError
from onnxfix.training.layout import Manifest

__all__ = ["load_dataset"]


def load_dataset(path: str | os.PathLike, manifest: Manifest) -> tuple[list[np.ndarray], int]:
    """The arrays the training graph takes, in its input order, checked against the model."""
    path = Path(path)
    specs = manifest.feeds
    if not path.is_file():
        raise TrainingDataError(f"data file {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TrainingDataError(
            f"data file {str(path)!r} is not a readable .npz archive: {e}"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TrainingDataError(
            f"data file {str(path)!r} is a single array; save an .npz with numpy.savez"
        )
    with archive:
        wanted = [s.name for s in specs]
        missing = [n for n in wanted if n not in archive.files]
        if missing:
            raise TrainingDataError(
                f"{str(path)!r} lacks {', '.join(map(repr, missing))}; it needs one array per model "
                f"input and the target: {', '.join(wanted)} (it has: {', '.join(archive.files) or 'nothing'})"
            )
        try:
            arrays = [archive[n] for n in wanted]
        except ValueError as e:
            raise TrainingDataError(
                f"{str(path)!r} holds pickled objects, which onnxfix never loads"
            ) from e
    count = len(arrays[0])
    for spec, array in zip(specs, arrays):
        name, shape = spec.name, spec.shape
        if len(array) != count:
            raise TrainingDataError(
                f"{str(path)!r}: {name!r} has {len(array)} samples but {wanted[0]!r} has {count}; "
                "every array needs one entry per sample"
            )
        if array.ndim != len(shape) or any(
            isinstance(d, int) and d > 0 and d != a for d, a in zip(shape[1:], array.shape[1:])
        ):
            expected = "x".join(
                str(d) if isinstance(d, int) and d > 0 else "?" for d in ["N", *shape[1:]][1:]
            )
            raise TrainingDataError(
                f"{str(path)!r}: {name!r} has shape {tuple(array.shape)}; the model takes "
                f"(N, {expected.replace('x', ', ')}) per batch"
                if len(shape) > 1
                else f"{str(path)!r}: {name!r} has shape {tuple(array.shape)}; the model takes (N,)"
            )
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "i" and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
            raise TrainingDataError(
                f"{str(path)!r}: {name!r} must hold whole class indices, not {array.dtype} values"
            )
        if array.dtype.kind not in "biuf":
            raise TrainingDataError(
                f"{str(path)!r}: {name!r} holds {array.dtype} values, not numbers"
            )
    return [a.astype(np.dtype(s.dtype), copy=False) for s, a in zip(specs, arrays)], count

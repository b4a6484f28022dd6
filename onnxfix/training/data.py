"""Training and validation data files (``.npz``), checked against the artifacts' manifest.

One array per model input plus the target, named as make-artifacts reported; read with
``allow_pickle=False``: onnxfix never unpickles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfix.arrayfiles import ArrayFileProblem, open_arrays
from onnxfix.errors import TrainingDataError
from onnxfix.training.layout import Manifest, TensorSpec

__all__ = ["load_dataset"]

_CHUNK = 1 << 20  # values per block of a check: its masks take a few MB, whatever the data


def load_dataset(
    path: str | os.PathLike, manifest: Manifest, *, mapped: bool = False
) -> tuple[list[np.ndarray], int]:
    """The arrays the training graph takes, in its input order, checked against the model.

    ``mapped``: each array memory-mapped from the file where it is stored uncompressed
    (:meth:`onnxfix.arrayfiles.ArrayFile.map`; a compressed one is read into memory) and
    returned in the file's dtype, not cast to the model's: the caller casts a batch at a time.
    The checks are the same and run a chunk at a time, so a data set larger than memory works.
    """
    path = Path(path)
    specs = manifest.feeds
    if not path.is_file():
        raise TrainingDataError(f"data file {str(path)!r} does not exist")
    wanted = [s.name for s in specs]
    # Headers checked against the file before numpy reads: a truncated archive or one whose
    # header claims 2^40 samples is an error, not a MemoryError (onnxfix.arrayfiles).
    try:
        with open_arrays(path) as archive:
            if archive.keys is None:
                raise TrainingDataError(
                    f"data file {str(path)!r} is a single array; save an .npz with numpy.savez"
                )
            missing = [n for n in wanted if n not in archive.keys]
            if missing:
                raise TrainingDataError(
                    f"{str(path)!r} lacks {', '.join(map(repr, missing))}; it needs one array per model "
                    f"input and the target: {', '.join(wanted)} (it has: {', '.join(archive.keys) or 'nothing'})"
                )
            arrays = [archive.map(n) if mapped else archive.read(n) for n in wanted]
    except ArrayFileProblem as e:
        if e.pickled:
            raise TrainingDataError(
                f"{str(path)!r} {e.reason}, which onnxfix never loads; save plain numeric "
                "arrays with numpy.savez"
            ) from None
        raise TrainingDataError(f"data file {str(path)!r} {e.reason}") from None
    for name, array in zip(wanted, arrays):
        if array.ndim == 0:
            raise TrainingDataError(
                f"{str(path)!r}: {name!r} is a single value (shape ()); it needs one entry per "
                "sample, the samples along its first axis"
            )
    count = len(arrays[0])
    if count == 0:
        raise TrainingDataError(
            f"{str(path)!r} holds no samples ({wanted[0]!r} has shape {arrays[0].shape}); "
            "training needs at least one"
        )
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
        if array.dtype.kind not in "biuf":
            raise TrainingDataError(
                f"{str(path)!r}: {name!r} holds {array.dtype} values, not numbers"
            )
    checked = [_checked_values(path, manifest, s, a, mapped=mapped) for s, a in zip(specs, arrays)]
    return checked, count


def _scan(array: np.ndarray, bad: Callable[[np.ndarray], np.ndarray]) -> _Bad | None:
    """Where ``bad`` (elementwise, of a block of ``array``'s samples) first holds and how often,
    or None: computed over blocks of about _CHUNK values, so never a full-size mask."""
    row = math.prod(array.shape[1:]) if array.ndim else 1
    step = max(1, _CHUNK // max(row, 1))
    first: tuple[int, ...] | None = None
    count = 0
    for start in range(0, len(array) if array.ndim else 1, step):
        block = array[start : start + step] if array.ndim else array
        mask = np.asarray(bad(np.asarray(block)))
        n = int(np.count_nonzero(mask))
        if n and first is None:
            at = np.unravel_index(int(np.argmax(mask)), mask.shape)
            first = (start + int(at[0]), *(int(i) for i in at[1:])) if array.ndim else ()
        count += n
    return _Bad(first, count, array.size) if first is not None else None


@dataclass(frozen=True)
class _Bad:
    first: tuple[int, ...]  # the first bad value's index
    count: int
    size: int  # the values checked


def _checked_values(
    path: Path, manifest: Manifest, spec: TensorSpec, array: np.ndarray, *, mapped: bool = False
):
    """``array`` in the training graph's dtype, once every value is one training can use.

    Checked before the first step, since nothing after it would say: a NaN or infinity trains
    NaN parameters; a label outside the classes trains on nothing (ONNX Runtime's
    cross-entropy scores a negative label 0) or makes ONNX Runtime read out of bounds and
    crash (10**12). Each check is one pass over the array; the slow path (finding the first
    bad value and counting) runs only on a refusal.
    """
    dtype = np.dtype(spec.dtype)
    target = manifest.target is not None and spec.name == manifest.target.name
    labels = target and manifest.loss == "cross-entropy"
    rule = _label_rule(manifest) if labels else f"{spec.name!r} takes whole numbers ({dtype})"

    def cast(values: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return values.astype(dtype, copy=False)

    if dtype.kind in "iu" and array.dtype.kind == "f":

        def fractional(block: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                return ~np.isfinite(block) | (np.mod(block, 1) != 0)

        bad = _scan(array, fractional)
        if bad is not None:
            raise _refusal(path, spec.name, array, bad, "not whole numbers", rule)
    if labels:
        classes = class_count(manifest)
        ignored = manifest.ignore_index

        def outside_classes(b: np.ndarray) -> np.ndarray:
            out = (b < 0) if classes is None else (b < 0) | (b >= classes)
            return out & (b != ignored) if ignored is not None else out

        bad = _scan(array, outside_classes)
        if bad is not None:
            hint = ""
            if classes is not None and array.min() == 1 and array.max() == classes:
                hint = f". The labels look one-based (1 to {classes}): subtract 1"
            outside = f"outside 0 to {classes - 1}" if classes is not None else "negative"
            raise _refusal(path, spec.name, array, bad, outside, rule + hint)
    if dtype.kind == "f":
        bad = _scan(array, lambda b: ~np.isfinite(cast(b)))
        if bad is not None:
            value = array[bad.first]
            if np.isfinite(value):  # finite in the file, beyond the model's dtype
                raise TrainingDataError(
                    f"{str(path)!r}: {_at(spec.name, bad.first)} is {_value(value)}, beyond "
                    f"the largest {dtype} value, which {spec.name!r} takes; scale the data down"
                )
            raise _refusal(
                path,
                spec.name,
                cast(np.asarray(array[bad.first])),
                bad,
                "not finite",
                "training data must be finite: repair or drop the samples that hold NaN or "
                "infinity",
            )
        if target and manifest.loss == "bce":

            def outside_unit(block: np.ndarray) -> np.ndarray:
                values = cast(block)
                return (values < 0) | (values > 1)

            bad = _scan(array, outside_unit)
            if bad is not None:
                raise _refusal(
                    path,
                    spec.name,
                    cast(np.asarray(array[bad.first])),
                    bad,
                    "outside 0 to 1",
                    "bce compares each output with a target from 0 to 1 (a probability; 0 or 1 "
                    "for a hard label)",
                )
    return array if mapped else cast(array)


def class_count(manifest: Manifest) -> int | None:
    """The classes cross-entropy scores: axis 1 of the loss input, (N, C) or (N, C, d1, ...);
    its declared size if static, else the size the build ran it with."""
    for out in manifest.outputs:
        if out.name == manifest.loss_input and len(out.shape) >= 2:
            declared = out.shape[1]
            if isinstance(declared, int) and declared > 0:
                return declared
    probe = manifest.probe.loss_input
    return probe[1] if len(probe) >= 2 and probe[1] > 0 else None


def _label_rule(manifest: Manifest) -> str:
    classes = class_count(manifest)
    if classes is None:
        return f"cross-entropy on {manifest.loss_input!r} takes class indices from 0"
    ignored = (
        f" or the ignore index {manifest.ignore_index}" if manifest.ignore_index is not None else ""
    )
    return (
        f"cross-entropy on {manifest.loss_input!r} has {classes} classes, so a label must be a "
        f"class index from 0 to {classes - 1}{ignored}"
    )


def _at(name: str, index: tuple) -> str:
    return f"{name}[{', '.join(str(int(i)) for i in index)}]"


def _value(value) -> str:
    return str(int(value)) if np.asarray(value).dtype.kind in "biu" else f"{float(value):g}"


def _refusal(
    path: Path, name: str, values: np.ndarray, bad: _Bad, problem: str, rule: str
) -> TrainingDataError:
    """The first bad value, where it is and how many there are, and what is expected;
    ``values``: the array, or the first bad value alone."""
    value = values if values.ndim == 0 else values[bad.first]
    verb = "is" if bad.count == 1 else "are"
    if bad.count == 1 and problem.startswith("not whole"):
        problem = "not a whole number"
    return TrainingDataError(
        f"{str(path)!r}: {_at(name, bad.first)} is {_value(value)} ({bad.count} of {bad.size} "
        f"values of {name!r} {verb} {problem}); {rule}"
    )

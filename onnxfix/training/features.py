"""The frozen prefix's outputs over a data set, computed once and kept (``split_arrays``).

For artifacts made with ``--split``: the prefix (``prefix_model.onnx``) runs over the data in
batches in a plain ONNX Runtime InferenceSession, and each cut tensor's values go to a ``.npy``
file in the artifacts' ``features/`` folder, written memory-mapped (numpy's ``open_memmap``)
and read back memory-mapped, so the features need not fit in memory. The files are named by a
hash of the data file's bytes and the prefix model's bytes: reused while both are unchanged,
computed anew when either changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import ArtifactsError
from onnxfix.outputs import writing
from onnxfix.training.data import load_dataset
from onnxfix.training.layout import ArtifactsLayout, Manifest

__all__ = ["SplitData", "split_arrays", "PREFIX_BATCH"]

PREFIX_BATCH = 32  # samples per prefix run when the model's batch is not fixed: train's default
# batch, so the prefix's activations take no more memory than a training step's
_CHUNK = 1 << 20

Progress = Callable[[int, int], None]  # samples done, samples in all


@dataclass(frozen=True)
class SplitData:
    arrays: list[np.ndarray]  # the head's feeds, in the manifest's order (target last)
    count: int
    files: tuple[Path, ...]  # the feature files, one per cut tensor
    reused: bool  # False: computed by this call


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()[:32]


def split_arrays(
    artifacts: Path, manifest: Manifest, data: Path, *, progress: Progress | None = None
) -> SplitData:
    """The head's feeds for the data file ``data``: cached features, passed-through inputs and
    the target (the data checked as for the whole model, :func:`load_dataset`)."""
    split = manifest.split
    assert split is not None
    layout = ArtifactsLayout(artifacts)
    # Memory-mapped where the .npz stores them uncompressed (numpy.savez), in the file's dtypes:
    # the prefix reads one batch at a time, so the data need not fit in memory.
    raw, count = load_dataset(
        data, dataclasses.replace(manifest, inputs=split.model_inputs), mapped=True
    )
    by_name = {s.name: a for s, a in zip(split.model_inputs, raw)}
    dtypes = {s.name: np.dtype(s.dtype) for s in manifest.feeds}
    dtypes.update((s.name, np.dtype(s.dtype)) for s in split.model_inputs)
    prefix = layout.prefix_model
    if not prefix.is_file():
        raise ArtifactsError(
            f"{str(prefix)!r} does not exist; the artifacts folder is incomplete, make it again "
            "with 'onnxfix make-artifacts --split'"
        )
    sources = [data, prefix] + [p for p in [prefix.with_name(prefix.name + ".data")] if p.is_file()]
    key = _digest(sources)
    files = tuple(layout.features / f"{key}.{i}.npy" for i in range(len(split.cut)))
    reused = all(f.is_file() for f in files)
    if reused:
        features = [np.load(f, mmap_mode="r", allow_pickle=False) for f in files]
        reused = all(len(a) == count for a in features)
    if not reused:
        features = _compute(prefix, manifest, by_name, dtypes, count, files, progress)
    cut = dict(zip((c.name for c in split.cut), features))
    feeds = [
        cut[s.name] if s.name in cut else _cast(by_name[s.name], dtypes[s.name])
        for s in manifest.inputs
    ]
    if manifest.target is not None:
        feeds.append(_cast(raw[-1], dtypes[manifest.target.name]))
    return SplitData(feeds, count, files, reused)


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` in the head's dtype: kept mapped when it is in it already, else cast in memory
    (an input the head takes as it is, or the target: checked to fit, load_dataset)."""
    if array.dtype == dtype:
        return array
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype)


def _compute(
    prefix: Path,
    manifest: Manifest,
    inputs: dict[str, np.ndarray],
    dtypes: dict[str, np.dtype],
    count: int,
    files: tuple[Path, ...],
    progress: Progress | None,
) -> list[np.ndarray]:
    """Run the prefix over every sample, into memory-mapped files renamed into place at the end."""
    from numpy.lib.format import open_memmap

    from onnxfix._proto import cpu_session, library_message

    split = manifest.split
    assert split is not None
    try:
        session = cpu_session(prefix, optimize=True)
    except Exception as e:  # onnxruntime's exception types are not exported
        raise ArtifactsError(
            f"{str(prefix)!r} does not load in onnxruntime: {library_message(e)}; make the "
            "artifacts again"
        ) from e
    names = [i.name for i in session.get_inputs()]
    fixed = {s.shape[0] for s in split.model_inputs if s.name in names and s.shape}
    batch = next((d for d in fixed if isinstance(d, int) and d > 0), PREFIX_BATCH)
    folder = files[0].parent
    with writing(f"the features in {str(folder)!r}"):
        folder.mkdir(exist_ok=True)
        token = secrets.token_hex(4)
        temps = [f.with_name(f".{f.name}.{token}.tmp") for f in files]
        out: list[Any] = []  # numpy.memmap
        try:
            for start in range(0, count, batch):
                stop = min(start + batch, count)
                # One batch read from the (mapped) data and cast to the prefix's dtype.
                with np.errstate(over="ignore", invalid="ignore"):
                    feeds = {
                        n: np.ascontiguousarray(inputs[n][start:stop], dtype=dtypes[n])
                        for n in names
                    }
                if stop - start < batch and batch != PREFIX_BATCH:  # a fixed batch: pad
                    feeds = {
                        n: np.concatenate([a, np.zeros((batch - len(a), *a.shape[1:]), a.dtype)])
                        for n, a in feeds.items()
                    }
                try:
                    results = session.run([c.name for c in split.cut], feeds)
                except Exception as e:  # onnxruntime's exception types are not exported
                    raise ArtifactsError(
                        f"the prefix model {str(prefix)!r} fails on samples {start} to "
                        f"{stop - 1}: {library_message(e)}"
                    ) from e
                if not out:
                    out = [
                        open_memmap(t, mode="w+", dtype=r.dtype, shape=(count, *r.shape[1:]))
                        for t, r in zip(temps, results)
                    ]
                for target, r in zip(out, results):
                    target[start:stop] = r[: stop - start]
                if progress is not None:
                    progress(stop, count)
            for target in out:
                target.flush()
            del out
            for t, f in zip(temps, files):
                os.replace(t, f)
        finally:
            for t in temps:
                t.unlink(missing_ok=True)
    return [np.load(f, mmap_mode="r", allow_pickle=False) for f in files]

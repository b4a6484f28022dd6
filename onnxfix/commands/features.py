"""``features``: the frozen prefix's outputs over a data file, as a file of their own.

For artifacts made with ``make-artifacts --split``: the same features ``train`` computes (and
keeps in the artifacts' ``features/`` folder), written as one ``.npz`` holding one array per
input of the head's training graph plus the target, so an app or a second machine can train
the head on them without running the prefix again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import ArtifactsError, param
from onnxfix.modelio.targets import Read, Write, check_writes
from onnxfix.outputs import check_output, temp_prefix, writing
from onnxfix.training.features import split_arrays
from onnxfix.training.layout import (
    ArtifactsLayout,
    is_artifact_file,
    is_feature_file,
    load_manifest,
)

__all__ = ["FeaturesResult", "compute_features"]


@dataclass(frozen=True)
class FeaturesResult:
    output: Path
    arrays: dict[str, tuple[int, ...]]  # name -> shape, in the head's input order
    reused: bool  # the artifacts' cache held them already


def compute_features(
    artifacts: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike
) -> FeaturesResult:
    """Write the head's feeds for ``data`` (checked as for train) to ``out`` (.npz), atomically."""
    artifacts, data, out = Path(artifacts), Path(data), Path(out)
    manifest = load_manifest(artifacts)
    if manifest.split is None:
        raise ArtifactsError(
            f"{str(artifacts)!r} was made without --split, so it has no prefix to compute; "
            "make the artifacts with 'onnxfix make-artifacts --split'"
        )
    check_output(out, what="features file")
    layout = ArtifactsLayout(artifacts)
    cached = (
        sorted(os.scandir(layout.features), key=lambda e: e.name)
        if layout.features.is_dir()
        else []
    )
    check_writes(
        [Read(data, "the training data")]
        + [
            Read(artifacts / e.name, "the artifacts' file")
            for e in sorted(os.scandir(artifacts), key=lambda e: e.name)
            if is_artifact_file(e.name)
        ]
        + [  # the cache this call may read the features from
            Read(layout.features / e.name, "the artifacts' cached features")
            for e in cached
            if is_feature_file(e.name)
        ],
        [Write(out, param("out", "out"))],
    )
    result = split_arrays(artifacts, manifest, data)
    names = [s.name for s in manifest.feeds]
    tmp = out.parent / f"{temp_prefix(out)}tmp.npz"
    try:
        with writing(f"features file {str(out)!r}"):
            with open(tmp, "wb") as f:
                arrays: dict[str, Any] = dict(zip(names, result.arrays))
                np.savez(f, **arrays)
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return FeaturesResult(
        out, {n: tuple(a.shape) for n, a in zip(names, result.arrays)}, result.reused
    )

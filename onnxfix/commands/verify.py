"""``verify``: recompute the fixed kernels' hashes and compare them with the recorded provenance.

Works on a model file, an artifacts folder (its checkpoint) or a checkpoint file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from onnxfix.dtypes import from_le_bytes, np_dtype
from onnxfix.errors import ProvenanceError
from onnxfix.provenance import (
    PROVENANCE_KEY,
    FixedTensor,
    Provenance,
    parse_provenance,
    read_provenance,
    tensor_digest,
)
from onnxfix.training.layout import ArtifactsLayout, checkpoint_parts, load_manifest

__all__ = ["TensorCheck", "VerifyReport", "verify"]


@dataclass(frozen=True)
class TensorCheck:
    name: str
    layer: str
    ok: bool
    max_abs_diff: float | None  # None when the recorded values are not available
    problem: str | None = None
    fixed_channels: tuple[int, ...] | None = None  # None: the whole tensor is fixed
    # changed fixed channels -> their largest absolute difference (None: values not recorded)
    changed_channels: dict[int, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyReport:
    source: str
    checks: list[TensorCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _compare(name: str, entry: FixedTensor, actual: np.ndarray | None) -> TensorCheck:
    """Check ``actual``, what the file holds of the fixed values (:meth:`FixedTensor.fixed_values`:
    the whole tensor, or its fixed channels' rows), against the record."""
    layer, channels = entry.layer, entry.fixed_channels
    if actual is None:
        return TensorCheck(name, layer, False, None, "missing", channels)
    if tuple(actual.shape) != entry.fixed_shape:
        return TensorCheck(name, layer, False, None, "reshaped", channels)
    if tensor_digest(actual) == entry.sha256:
        return TensorCheck(name, layer, True, 0.0, None, channels)
    expected = entry.values()
    diff = None
    if expected is not None:
        gap = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        diff = float(np.max(gap))
    changed: dict[int, float | None] = {}
    for c in entry.changed_channels(actual):
        row = entry.fixed_channels.index(c) if entry.fixed_channels else 0
        changed[c] = None if expected is None else float(np.max(gap[row]))
    return TensorCheck(name, layer, False, diff, "differs", channels, changed)


def _checkpoint_tensors(path: Path) -> tuple[Provenance, dict[str, np.ndarray]]:
    """The checkpoint's provenance record and its fixed tensors' values, read from the file
    (only those tensors: a CheckpointState would load every weight)."""
    from onnxfix.training.checkpoint import read_checkpoint

    stored = read_checkpoint(path)
    if PROVENANCE_KEY not in stored.properties:
        raise ProvenanceError(
            f"checkpoint {str(path)!r} has no {PROVENANCE_KEY!r} property; make it with 'onnxfix make-artifacts'"
        )
    record = parse_provenance(stored.properties[PROVENANCE_KEY], source=str(path))
    parts = checkpoint_parts(stored.properties, source=str(path))
    values = {}
    for name, entry in record.items():
        # A tensor with some channels fixed trains as two parameters; the frozen one holds
        # exactly the fixed rows.
        held = parts[name].fixed_name if name in parts else name
        param = stored.parameters.get(held)
        if param is None or stored.nominal:
            continue
        array = from_le_bytes(param.read(), np_dtype(param.data_type), param.dims)
        values[name] = array if name in parts else _fixed_part(entry, array)
    return record, values


def _fixed_part(entry: FixedTensor, whole: np.ndarray) -> np.ndarray:
    """The fixed values of ``whole`` (``whole`` itself when it lacks the recorded shape:
    reported as reshaped)."""
    if tuple(whole.shape) != entry.shape:
        return whole
    return entry.fixed_values(whole)


def _model_tensors(path: Path, names) -> dict[str, np.ndarray]:
    from onnxfix._proto import find_initializer
    from onnxfix.modelio.modelfile import load_model

    if not path.is_file():
        return {}
    mf = load_model(path)
    found = {name: find_initializer(mf.model, name) for name in names}
    return {name: mf.read_array(f[1]) for name, f in found.items() if f is not None}


def _prefix_values(path: Path, manifest, record: Provenance) -> dict[str, np.ndarray]:
    """The fixed values of the tensors in the frozen prefix of ``--split`` artifacts (a plain
    inference model: each tensor whole, also one with some channels fixed)."""
    assert manifest.split is not None
    return _fixed_parts(record, _model_tensors(path, manifest.split.prefix_fixed))


def _fixed_parts(record: Provenance, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fixed values of each whole tensor in ``values``."""
    return {
        name: _fixed_part(record[name], array) for name, array in values.items() if name in record
    }


def _with_recorded_values(record: Provenance, full: Provenance) -> Provenance:
    """``record`` with the values of ``full``'s records where its own lack them (the
    checkpoint's copy of the record may leave them out; the manifest's has them)."""
    out = {}
    for name, entry in record.items():
        known = full.get(name)
        if entry.values_b64 is None and known is not None and known.sha256 == entry.sha256:
            entry = replace(entry, values_b64=known.values_b64)
        out[name] = entry
    return out


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check every recorded fixed tensor of ``path``; raises ProvenanceError when none is recorded."""
    path = Path(path)
    if path.is_dir():
        layout = ArtifactsLayout(path)
        if not layout.checkpoint.exists():
            raise ProvenanceError(
                f"{str(path)!r} is a folder without a checkpoint; give a model, an artifacts folder or a checkpoint"
            )
        record, values = _checkpoint_tensors(layout.checkpoint)
        if layout.manifest.is_file():  # values for the max-difference report
            manifest = load_manifest(path)
            record = _with_recorded_values(record, manifest.provenance)
            if manifest.split is not None:  # --split: the prefix's fixed kernels are in its model
                values.update(_prefix_values(layout.prefix_model, manifest, record))
    elif path.suffix == ".onnx":
        from onnxfix._proto import find_initializer
        from onnxfix.modelio.modelfile import load_model

        mf = load_model(path)
        record = read_provenance(mf.model, source=str(path))
        values = {}
        for name in record:
            found = find_initializer(mf.model, name)
            if found is not None:
                values[name] = mf.read_array(found[1])
        values = _fixed_parts(record, values)
    elif path.exists():
        record, values = _checkpoint_tensors(path)
    else:
        raise ProvenanceError(f"{str(path)!r} does not exist")
    if not record:
        raise ProvenanceError(
            f"{str(path)!r} records no fixed kernels ({PROVENANCE_KEY!r}); there is nothing to verify. "
            "Fix kernels with 'onnxfix set-kernel' first"
        )
    return VerifyReport(str(path), [_compare(n, e, values.get(n)) for n, e in record.items()])

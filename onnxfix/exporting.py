"""``export``: the fine-tuned inference model (original outputs, no loss, no gradients)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from .errors import ArtifactsError, ModelFileError, VerifyError
from .provenance import read_provenance, tensor_digest, write_provenance
from .training import load_manifest

__all__ = ["ExportResult", "export_model"]


@dataclass(frozen=True)
class ExportResult:
    output: Path
    outputs: list[str]
    fixed_checked: int


def export_model(
    artifacts: str | os.PathLike,
    output: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
) -> ExportResult:
    """Write the inference model with the checkpoint's parameters to ``output``, atomically."""
    from .modelio import check_model_file
    from .selftest import open_session

    artifacts, output = Path(artifacts), Path(output)
    manifest = load_manifest(artifacts)
    checkpoint = Path(checkpoint) if checkpoint is not None else artifacts / "checkpoint"
    if not checkpoint.exists():
        raise ArtifactsError(f"checkpoint {str(checkpoint)!r} does not exist")
    if not output.parent.is_dir():
        raise ModelFileError(
            f"output folder {str(output.parent)!r} does not exist; create it first"
        )
    _, module, _ = open_session(artifacts, checkpoint)
    names = [o["name"] for o in manifest["outputs"]]
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        staged = staging / output.name
        module.export_model_for_inferencing(str(staged), names)
        model = onnx.load(str(staged))
        record = manifest.get("provenance") or {}
        values = {t.name: t for t in model.graph.initializer}
        for name, entry in record.items():
            if (
                name not in values
                or tensor_digest(onnx.numpy_helper.to_array(values[name])) != entry["sha256"]
            ):
                raise VerifyError(
                    f"fixed kernel {name!r} is not intact in the exported model; it was not written"
                )
        write_provenance(model, record)
        if model.ByteSize() > (1 << 31) - (64 << 20):
            onnx.save(model, staged, save_as_external_data=True, location=output.name + ".data")
        else:
            onnx.save(model, staged)
        check_model_file(staged)
        for item in staging.iterdir():
            os.replace(item, output.parent / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert read_provenance(model) == record
    return ExportResult(output, names, len(record))

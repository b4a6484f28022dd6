"""``export``: the fine-tuned inference model (original outputs, no loss, no gradients).

The artifacts folder keeps the normalised inference graph (``inference_model.onnx``, before any
training-only rewrite); export copies it with the checkpoint's parameter values put in, through
the same streaming writer as set-kernel, so it costs about a file copy at any model size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from onnxfix._proto import find_initializer
from onnxfix.dtypes import dtype_name
from onnxfix.errors import ArtifactsError, ModelFileError, VerifyError
from onnxfix.modelio.modelfile import load_model
from onnxfix.modelio.save import save_model
from onnxfix.provenance import read_provenance, tensor_digest
from onnxfix.training.checkpoint import read_checkpoint
from onnxfix.training.layout import INFERENCE_MODEL, ArtifactsLayout, load_manifest

__all__ = ["ExportResult", "export_model"]

# Parameters that exist only in the training graph (added by rewrites), not in the model.
TRAINING_ONLY_PREFIX = "onnxfix."


@dataclass(frozen=True)
class ExportResult:
    output: Path
    outputs: list[str]
    parameters: int  # values taken from the checkpoint
    fixed_checked: int


def export_model(
    artifacts: str | os.PathLike,
    output: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
) -> ExportResult:
    """Write the inference model with the checkpoint's parameters to ``output``, atomically."""
    artifacts, output = Path(artifacts), Path(output)
    layout = ArtifactsLayout(artifacts)
    manifest = load_manifest(artifacts)
    checkpoint = Path(checkpoint) if checkpoint is not None else layout.checkpoint
    if not checkpoint.exists():
        raise ArtifactsError(f"checkpoint {str(checkpoint)!r} does not exist")
    if not output.parent.is_dir():
        raise ModelFileError(
            f"output folder {str(output.parent)!r} does not exist; create it first"
        )
    # Where each value lies in the checkpoint file: the save copies it from there kernel-side,
    # so no value is held in memory (a CheckpointState would hold them all).
    stored = read_checkpoint(checkpoint)
    if stored.nominal:
        raise ArtifactsError(
            f"checkpoint {str(checkpoint)!r} is nominal (shapes only, no values); export the "
            "checkpoint a training run saved"
        )
    mf = load_model(layout.inference_model)
    record = read_provenance(mf.model, source=str(layout.inference_model))
    count = 0
    for name in manifest.trainable + manifest.frozen:
        found = find_initializer(mf.model, name)
        if found is None:
            if name.startswith(TRAINING_ONLY_PREFIX):
                continue
            raise ArtifactsError(
                f"checkpoint parameter {name!r} is not in {INFERENCE_MODEL}; the artifacts folder "
                "is inconsistent, make it again"
            )
        tensor = found[1]
        param = stored.parameters.get(name)
        if param is None or (param.dims, param.data_type) != (tuple(tensor.dims), tensor.data_type):
            got = (
                "missing" if param is None else f"{list(param.dims)} {dtype_name(param.data_type)}"
            )
            raise ArtifactsError(
                f"parameter {name!r} in checkpoint {str(checkpoint)!r} is {got}, the model's is "
                f"{list(tensor.dims)} {dtype_name(tensor.data_type)}; is it from these artifacts?"
            )
        mf.write_from(tensor, param.path, param.offset)  # copied kernel-side on save
        count += 1
    expect = {}
    for name, entry in record.items():
        found = find_initializer(mf.model, name)
        values = mf.read_array(found[1]) if found is not None else None
        if values is None or tensor_digest(values) != entry.sha256:
            raise VerifyError(
                f"fixed kernel {name!r} is not intact in the checkpoint; nothing was written"
            )
        expect[name] = values
    save_model(mf, output, check=True, expect=expect)
    return ExportResult(output, [o.name for o in manifest.outputs], count, len(record))

"""``export``: the fine-tuned inference model (original outputs, no loss, no gradients).

The artifacts folder keeps the normalised inference graph (``inference_model.onnx``, before any
training-only rewrite); export copies it with the checkpoint's parameter values put in, through
the same streaming writer as set-kernel, so it costs about a file copy at any model size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxfix._proto import find_initializer
from onnxfix.channels import ChannelParts
from onnxfix.dtypes import dtype_name, from_le_bytes, np_dtype
from onnxfix.errors import ArtifactsError, ModelFileError, VerifyError, param
from onnxfix.modelio.modelfile import load_model
from onnxfix.modelio.save import save_model
from onnxfix.modelio.targets import Read, Write, check_writes
from onnxfix.provenance import read_provenance
from onnxfix.training.checkpoint import read_checkpoint
from onnxfix.training.layout import (
    INFERENCE_MODEL,
    ArtifactsLayout,
    is_artifact_file,
    load_manifest,
)

__all__ = ["ExportResult", "export_model"]

# Parameters that exist only in the training graph (added by rewrites), not in the model.
TRAINING_ONLY_PREFIX = "onnxfix."
_OUTPUT = param("out", "output")  # the parameter, as messages name it


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
    parameters: str | os.PathLike | None = None,
) -> ExportResult:
    """Write the inference model with the checkpoint's parameters to ``output``, atomically.

    ``parameters``: an ``.npz`` of every trainable parameter by name (what the web page's
    "Download trained parameters" saves), whose values replace the checkpoint's; the frozen
    ones still come from the checkpoint.
    """
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
    # Every file of the artifacts is an input, not only those read here: -o over one of them
    # would break the folder it exports from.
    reads = [Read(checkpoint, "the checkpoint")]
    reads.append(Read(checkpoint.with_name(checkpoint.name + ".data"), "the checkpoint's data"))
    reads += [
        Read(artifacts / e.name, "the artifacts' file")
        for e in sorted(os.scandir(artifacts), key=lambda e: e.name)
        if is_artifact_file(e.name)
    ]
    if parameters is not None:
        reads.append(Read(Path(parameters), "the parameters file"))
    check_writes(reads, [Write(output, _OUTPUT)])
    arrays = _load_parameters(Path(parameters), manifest) if parameters is not None else None
    # Where each value lies in the checkpoint file: the save copies it from there kernel-side,
    # so no value is held in memory (a CheckpointState would hold them all).
    stored = read_checkpoint(checkpoint)
    if stored.nominal:
        raise ArtifactsError(
            f"checkpoint {str(checkpoint)!r} is nominal (shapes only, no values); export the "
            "checkpoint a training run saved"
        )
    if arrays is None:
        _refuse_nonfinite(stored, manifest.trainable, checkpoint)
    mf = load_model(layout.inference_model)
    if mf.uses_external_data:
        data = output.with_name(output.name + ".data")
        check_writes(reads, [Write(data, _OUTPUT, "its data file", output)])
    record = read_provenance(mf.model, source=str(layout.inference_model))
    parts = {n for p in manifest.channel_parts.values() for n in (p.fixed_name, p.train_name)}
    count = 0
    for name in manifest.trainable + manifest.frozen:
        if name in parts:
            continue  # joined below
        found = find_initializer(mf.model, name)
        if found is None:
            if name.startswith(TRAINING_ONLY_PREFIX):
                continue
            raise ArtifactsError(
                f"checkpoint parameter {name!r} is not in {INFERENCE_MODEL}; the artifacts folder "
                "is inconsistent, make it again"
            )
        tensor = found[1]
        if arrays is not None and name in arrays:
            _write_given(mf, tensor, name, arrays[name], tuple(tensor.dims))
            count += 1
            continue
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
    for whole in manifest.channel_parts.values():
        held = {whole.fixed_name, whole.train_name} & set(stored.parameters)
        if not held and manifest.split is not None:
            continue  # in the frozen prefix (--split): the model's tensor is the trained one
        _join_parts(mf, whole, stored, checkpoint, arrays or {})
        count += 1
    expect = {}
    for name, entry in record.items():
        found = find_initializer(mf.model, name)
        values = mf.read_array(found[1]) if found is not None else None
        if values is None or entry.digest(values) != entry.sha256:
            raise VerifyError(
                f"fixed kernel {name!r} is not intact in the checkpoint; nothing was written"
            )
        expect[name] = values
    save_model(mf, output, check=True, expect=expect)
    return ExportResult(output, [o.name for o in manifest.outputs], count, len(record))


def _load_parameters(path: Path, manifest) -> dict[str, np.ndarray]:
    """The trainable parameters in the ``.npz`` at ``path``: every one, float32, finite."""
    from onnxfix.arrayfiles import ArrayFileProblem, open_arrays

    label = f"parameters file {str(path)!r}"
    if not path.is_file():
        raise ArtifactsError(f"{label} does not exist")
    try:
        with open_arrays(path) as archive:
            if archive.keys is None:
                raise ArtifactsError(
                    f"{label} is a single array; give the .npz the web page downloads"
                )
            missing = [n for n in manifest.trainable if n not in archive.keys]
            if missing:
                raise ArtifactsError(
                    f"{label} lacks trainable parameter {missing[0]!r}"
                    f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; is it "
                    "from these artifacts?"
                )
            arrays = {n: archive.read(n) for n in manifest.trainable}
    except ArrayFileProblem as e:
        raise ArtifactsError(f"{label} {e.reason}") from e
    for name, values in arrays.items():
        if values.dtype != np.float32:
            raise ArtifactsError(
                f"{label}: parameter {name!r} is {values.dtype}, not float32; is it from these "
                "artifacts?"
            )
        finite = np.isfinite(values)
        if not finite.all():
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise ArtifactsError(
                f"{label} holds {values[index]} in parameter {name!r} at "
                f"[{', '.join(map(str, index))}]: the training that saved it diverged; nothing "
                "was written"
            )
    return arrays


def _write_given(mf, tensor, name: str, values: np.ndarray, dims: tuple[int, ...]) -> None:
    if tuple(values.shape) != dims:
        raise ArtifactsError(
            f"parameter {name!r} in the parameters file has shape {list(values.shape)}, the "
            f"model's is {list(dims)}; is it from these artifacts?"
        )
    mf.write_array(tensor, values)


def _join_parts(
    mf, parts: ChannelParts, stored, checkpoint: Path, given: dict[str, np.ndarray]
) -> None:
    """Put tensor ``parts.name``, trained as two parameters (some channels fixed), back
    together into the model ``mf``: one tensor, as the model had it. The parts come from the
    checkpoint, or from ``given`` (export --parameters) where it holds them."""
    found = find_initializer(mf.model, parts.name)
    if found is None:
        raise ArtifactsError(
            f"tensor {parts.name!r}, trained in two parts, is not in {INFERENCE_MODEL}; the "
            "artifacts folder is inconsistent, make it again"
        )
    tensor = found[1]
    dtype = np_dtype(tensor.data_type)
    values = []
    for name, rows in (
        (parts.fixed_name, len(parts.fixed)),
        (parts.train_name, len(parts.trained)),
    ):
        want = (rows, *parts.row_shape)
        if name in given:  # export --parameters: the trained part from the download
            if tuple(given[name].shape) != want:
                raise ArtifactsError(
                    f"parameter {name!r} in the parameters file has shape "
                    f"{list(given[name].shape)}, not {list(want)}; is it from these artifacts?"
                )
            values.append(given[name])
            continue
        param = stored.parameters.get(name)
        if param is None or (tuple(param.dims), param.data_type) != (want, tensor.data_type):
            got = (
                "missing" if param is None else f"{list(param.dims)} {dtype_name(param.data_type)}"
            )
            raise ArtifactsError(
                f"parameter {name!r} in checkpoint {str(checkpoint)!r} is {got}, not "
                f"{list(want)} {dtype_name(tensor.data_type)}; is it from these artifacts?"
            )
        values.append(from_le_bytes(param.read(), dtype, want))
    if tuple(tensor.dims) != parts.shape:
        raise ArtifactsError(
            f"tensor {parts.name!r} in {INFERENCE_MODEL} has shape {list(tensor.dims)}, its "
            f"parts make {list(parts.shape)}; the artifacts folder is inconsistent, make it again"
        )
    mf.write_array(tensor, parts.join(*values))


def _refuse_nonfinite(stored, names: tuple[str, ...], checkpoint: Path) -> None:
    """Refuse a checkpoint whose trained parameters hold NaN or infinity: the training that
    saved it diverged (onnxfix train does not save such a state; an app on a device may), and
    the exported model would output NaN for every input."""
    for name in names:
        values = stored.parameters.get(name)
        found = _first_nonfinite(values) if values is not None else None
        if found is not None:
            index, value = found
            raise ArtifactsError(
                f"checkpoint {str(checkpoint)!r} holds {value} in parameter {name!r} at "
                f"[{', '.join(str(i) for i in index)}]: the training that saved it diverged; "
                "nothing was written. Export a checkpoint saved before that, or train again "
                "with a lower learning rate"
            )


_CHUNK = 16 << 20  # bytes read at a time: export holds no whole weight in memory


def _first_nonfinite(stored) -> tuple[tuple[int, ...], float] | None:
    """Where the first NaN or infinity of a stored float parameter is, and its value."""
    dtype = np_dtype(stored.data_type)
    if dtype.name not in ("float16", "bfloat16", "float32", "float64"):
        return None
    step = _CHUNK - _CHUNK % dtype.itemsize
    done = 0
    with open(stored.path, "rb") as f:
        while done < stored.length:
            data = os.pread(f.fileno(), min(step, stored.length - done), stored.offset + done)
            data = data[: len(data) - len(data) % dtype.itemsize]
            if not data:
                return None  # a short file: the copy on save reports it
            values = from_le_bytes(data, dtype, (len(data) // dtype.itemsize,))
            finite = np.isfinite(values)
            if not finite.all():
                at = int(np.argmin(finite))
                flat = done // dtype.itemsize + at
                index = tuple(int(i) for i in np.unravel_index(flat, stored.dims))
                return index, float(values[at])
            done += len(data)
    return None

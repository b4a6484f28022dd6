"""``evaluate`` and ``predict``: before/after comparisons without a script.

``evaluate ARTIFACTS`` runs the eval model on the checkpoint (or another one) over the data:
the loss and, for cross-entropy and bce, accuracy, exactly as ``train`` reports validation.
``evaluate MODEL.onnx`` runs an inference model (the original, or what ``export`` wrote) with
ONNX Runtime and scores its output with ``loss`` in NumPy (:func:`onnxfix.training.metrics.
score_outputs`). ``predict MODEL.onnx`` writes the model's outputs for the data's inputs to an
``.npz``, atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import ArtifactsError, TrainingDataError, param
from onnxfix.modelio.targets import Read, Write, check_writes
from onnxfix.outputs import check_output, temp_prefix, writing
from onnxfix.training.options import LOSSES, TARGET_NAMES

__all__ = ["Evaluation", "evaluate", "predict"]


@dataclass(frozen=True)
class Evaluation:
    samples: int
    loss: float
    accuracy: float | None  # cross-entropy and bce
    loss_kind: str
    scored: str  # what was scored: the eval model, or a model's output


def evaluate(
    target: str | os.PathLike,
    data: str | os.PathLike,
    *,
    loss: str | None = None,
    output: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    batch_size: int | None = None,
) -> Evaluation:
    """The loss (and accuracy) of artifacts or of an inference model over ``data``."""
    target = Path(target)
    if target.is_dir():
        if loss is not None or output is not None:
            raise ArtifactsError(
                f"{param('loss')} and {param('output')} are for a model file; artifacts score "
                "with the loss they were made with"
            )
        return _evaluate_artifacts(target, Path(data), checkpoint, batch_size)
    if checkpoint is not None:
        raise ArtifactsError(f"{param('checkpoint')} is for an artifacts folder, not a model")
    return _evaluate_model(target, Path(data), loss, output, batch_size)


def _evaluate_artifacts(artifacts: Path, data: Path, checkpoint, batch_size) -> Evaluation:
    from onnxfix.training.data import load_dataset
    from onnxfix.training.layout import load_manifest
    from onnxfix.training.metrics import Metric, evaluate_module
    from onnxfix.training.selftest import open_session

    manifest = load_manifest(artifacts)
    if manifest.split is not None:
        raise ArtifactsError(
            f"{str(artifacts)!r} was made with --split; evaluate its exported model instead "
            "('onnxfix export', then 'onnxfix evaluate MODEL.onnx --loss ...')"
        )
    arrays, count = load_dataset(data, manifest)
    fixed = manifest.fixed_batch
    batch = batch_size or fixed or 32
    state, module, _ = open_session(
        artifacts, Path(checkpoint) if checkpoint else None, optimizer=False
    )
    metric = Metric(module, manifest)
    value, accuracy = evaluate_module(module, metric, arrays, batch, fixed)
    return Evaluation(count, value, accuracy, manifest.loss, "the eval model")


def _model_arrays(model, data: Path, extra: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """The data's arrays for the model's inputs (cast to their types) and ``extra`` names."""
    from onnxfix.arrayfiles import ArrayFileProblem, open_arrays
    from onnxfix.dtypes import np_dtype

    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    label = f"data file {str(data)!r}"
    if not data.is_file():
        raise TrainingDataError(f"{label} does not exist")
    try:
        with open_arrays(data) as archive:
            if archive.keys is None:
                raise TrainingDataError(f"{label} is a single array; save an .npz with numpy.savez")
            wanted = [i.name for i in inputs] + extra
            missing = [n for n in wanted if n not in archive.keys]
            if missing:
                raise TrainingDataError(
                    f"{label} has no array {missing[0]!r}; it holds {', '.join(archive.keys)}"
                )
            arrays = {n: archive.read(n) for n in wanted}
    except ArrayFileProblem as e:
        raise TrainingDataError(f"{label} {e.reason}") from e
    for value in inputs:
        dtype = np_dtype(value.type.tensor_type.elem_type)
        a = arrays[value.name]
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise TrainingDataError(f"{label}: array {value.name!r} holds NaN or infinity")
        arrays[value.name] = a.astype(dtype, copy=False)
    counts = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise TrainingDataError(
            f"{label}: the arrays hold different numbers of samples (axis 0): "
            + ", ".join(f"{n} {len(a) if a.ndim else 0}" for n, a in arrays.items())
        )
    return arrays, counts.pop()


def _run(path: Path, model, arrays, count: int, batch_size: int | None, names) -> list[np.ndarray]:
    """The model's outputs ``names`` over all samples, in batches."""
    from onnxfix._proto import cpu_session, library_message

    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in weights]
    dims = [d for i in graph.input if i.name in inputs for d in i.type.tensor_type.shape.dim[:1]]
    fixed = next((d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value > 0), None)
    batch = batch_size or fixed or 32
    if fixed is not None and batch != fixed:
        raise TrainingDataError(
            f"the model's batch size is fixed at {fixed}; use {param('batch_size')} {fixed}"
        )
    try:
        session = cpu_session(path, optimize=True)
        results: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, count - (count % batch if fixed else 0), batch):
            feed = {n: arrays[n][start : start + batch] for n in inputs}
            for k, value in enumerate(session.run(list(names), feed)):
                results[k].append(value)
    except Exception as e:  # ONNX Runtime's own exception types
        if isinstance(e, TrainingDataError):
            raise
        raise ArtifactsError(
            f"onnxruntime cannot run {str(path)!r} on the data: {library_message(e)}"
        ) from e
    return [np.concatenate(r) for r in results]


def _probabilities(model, output: str, loss: str) -> bool:
    """Whether ``output`` holds probabilities: it comes from a Softmax (cross-entropy) or a
    Sigmoid (bce). A LogSoftmax's output scores as logits: log-softmax of it is itself."""
    from onnxfix.training.plan import squasher

    node = squasher(model, loss, output)
    return node is not None and node.op_type != "LogSoftmax"


def _evaluate_model(path: Path, data: Path, loss, output, batch_size) -> Evaluation:
    from onnxfix.modelio.modelfile import load_model
    from onnxfix.training.metrics import score_outputs
    from onnxfix.training.plan import class_axis

    if loss is None or loss not in LOSSES or loss == "none":
        raise ArtifactsError(
            f"a model has no loss of its own: give {param('loss')} (one of "
            f"{', '.join(x for x in LOSSES if x != 'none')})"
        )
    model = load_model(path).model
    outputs = [o.name for o in model.graph.output]
    output = output or outputs[0]
    if output not in outputs:
        raise ArtifactsError(
            f"{param('output')} {output!r} is not an output of the model; its outputs are: {', '.join(outputs)}"
        )
    target_name = TARGET_NAMES[loss]
    arrays, count = _model_arrays(model, data, [target_name])
    (values,) = _run(path, model, arrays, count, batch_size, [output])
    target = arrays[target_name][: len(values)]
    axis = class_axis(model, loss, output)
    if axis is not None and values.ndim >= 3:  # classes to axis 1, as training has them
        values = np.moveaxis(values, axis, 1)
    want = values.shape if loss != "cross-entropy" else values.shape[:1] + values.shape[2:]
    if tuple(target.shape) != tuple(want):
        raise TrainingDataError(
            f"data file {str(data)!r}: array {target_name!r} has shape {list(target.shape)}, "
            f"and {loss} on output {output!r} needs {list(want)}"
        )
    value, accuracy = score_outputs(
        loss, values, target, probabilities=_probabilities(model, output, loss)
    )
    return Evaluation(len(values), value, accuracy, loss, f"output {output!r}")


def predict(
    model: str | os.PathLike,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch_size: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """Write ``model``'s outputs for ``data``'s inputs to the ``.npz`` ``output``, atomically;
    returns each output's shape."""
    from onnxfix.modelio.modelfile import load_model, model_reads

    path, data, out = Path(model), Path(data), Path(output)
    check_output(out, what="output")
    check_writes(
        [*model_reads(path, "the model"), Read(data, "the data")],
        [Write(out, param("out", "-o"))],
    )
    proto = load_model(path).model
    arrays, count = _model_arrays(proto, data, [])
    names = [o.name for o in proto.graph.output]
    values = _run(path, proto, arrays, count, batch_size, names)
    tmp = out.parent / f"{temp_prefix(out)}tmp.npz"
    try:
        with writing(f"output {str(out)!r}"):
            with open(tmp, "wb") as f:
                named: dict[str, Any] = dict(zip(names, values))
                np.savez(f, **named)
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {n: tuple(v.shape) for n, v in zip(names, values)}

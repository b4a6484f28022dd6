"""One training step on a synthetic batch, through the real training API; runs in a child.

It loads the artifacts exactly as an app on the device would, runs a step, and checks that every
frozen tensor is bit-identical afterwards and that the trainable ones received gradients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import ArtifactsError, TrainingStepError, param
from onnxfix.provenance import tensor_digest
from onnxfix.training.isolation import JSON, set_stage
from onnxfix.training.jobs import SelfTestJob, SelfTestResult
from onnxfix.training.layout import ArtifactsLayout, Dim, Manifest, load_manifest
from onnxfix.training.ort import return_freed_buffers, training_api

__all__ = [
    "STEP_FAILED",
    "concrete_shape",
    "synthetic_batch",
    "selftest_in_child",
    "open_session",
    "step_memory",
]


# Per byte of trainable weights, what a step holds besides the weights: the gradient, and
# AdamW's two moments (onnxblock's SGD keeps no state).
_STATE_PER_TRAINABLE_BYTE = {"adamw": 3, "torch-adamw": 3, "sgd": 1}


def step_memory(manifest: Manifest, *, optimizer_step: bool = True) -> int:
    """Bytes one training step holds for the parameters: every weight, each trainable
    weight's gradient and, with ``optimizer_step``, the optimizer's state. Measured on a 1 GB
    model with AdamW: the self-test peaked at 4.4 GB, this estimate says 4.0 GB (activations
    and ORT's own buffers make the rest)."""
    trainable, frozen = manifest.trainable_bytes, manifest.frozen_bytes
    per_byte = _STATE_PER_TRAINABLE_BYTE.get(manifest.optimizer, 3) if optimizer_step else 1
    return trainable + frozen + trainable * per_byte


def concrete_shape(shape: tuple[Dim, ...] | list[Dim]) -> tuple[int, ...]:
    """A shape to try the model with: named or unknown dims become 2 (batch) or 32."""
    return tuple(
        d if isinstance(d, int) and d > 0 else (2 if i == 0 else 32) for i, d in enumerate(shape)
    )


STEP_FAILED = "self-test: the training step failed in onnxruntime"

# Input scales the self-test tries, in order: a real model can be saturated on unit noise
# (PaddleOCR's detector outputs exactly 0, so every gradient is 0) yet alive on wider noise.
BATCH_SCALES = (1.0, 3.0, 10.0)


def synthetic_batch(manifest: Manifest, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    """Random inputs (normal, ``scale`` wide) in the training graph's order, plus a target."""
    rng = np.random.default_rng(seed)
    probe = manifest.probe
    batch = []
    for spec, shape in zip(manifest.inputs, probe.inputs):
        dtype = np.dtype(spec.dtype)
        batch.append(
            rng.normal(0.0, scale, size=shape).astype(dtype)
            if dtype.kind == "f"
            else np.zeros(shape, dtype)
        )
    target = manifest.target
    if target is None:
        return batch
    scores = probe.loss_input
    dtype = np.dtype(target.dtype)
    if manifest.loss == "cross-entropy":  # scores (N, C, ...) -> class indices (N, ...)
        batch.append(rng.integers(0, scores[1], size=(scores[0], *scores[2:])).astype(dtype))
    elif manifest.loss == "bce":
        batch.append(rng.integers(0, 2, size=scores).astype(dtype))
    else:
        batch.append(rng.normal(size=scores).astype(dtype))
    return batch


def _ort_message(error: Exception) -> str:
    """The useful part of an ONNX Runtime error: from 'Non-zero status...' or its last line."""
    text = str(error).strip()
    marker = "Non-zero status code returned while running "
    if marker in text:
        return "while running " + text.split(marker, 1)[1].splitlines()[0][:300]
    return "(" + (text.splitlines()[-1][:300] if text else type(error).__name__) + ")"


def open_session(
    artifacts: Path, checkpoint: Path | None = None, *, optimizer: bool = True
) -> tuple[Any, Any, Any]:
    """CheckpointState, Module and Optimizer (None unless ``optimizer``) for an artifacts
    folder. The Optimizer allocates its state (AdamW: two moments per trainable weight) as it
    is made."""
    from onnxfix._proto import library_message
    from onnxfix.modelio.modelfile import load_model
    from onnxfix.training.checkpoint import read_checkpoint

    api = training_api()
    layout = ArtifactsLayout(Path(artifacts))
    checkpoint = Path(checkpoint or layout.checkpoint)
    models = [layout.training_model, layout.eval_model]
    for path in [checkpoint, *models, *([layout.optimizer_model] if optimizer else [])]:
        if not path.is_file():
            raise ArtifactsError(
                f"{str(path)!r} does not exist or is not a file; the artifacts folder is "
                "incomplete, make it again with 'onnxfix make-artifacts'"
            )
    # Read by onnxfix first: a damaged checkpoint gets an error naming the damage, and ONNX
    # Runtime never follows a wrong offset in it.
    read_checkpoint(checkpoint)
    # ONNX Runtime opens whatever data files the models name: onnxfix's rules first, as for
    # every model it reads (onnxfix.modelio.external).
    for path in [*models, *([layout.optimizer_model] if optimizer else [])]:
        load_model(path)
    return_freed_buffers()  # before the load, whose freed buffers would stay otherwise
    try:
        state = api.CheckpointState.load_checkpoint(str(checkpoint))
    except RuntimeError as e:  # ONNX Runtime's own text, no own type
        raise ArtifactsError(
            f"onnxruntime cannot load checkpoint {str(checkpoint)!r}: {library_message(e)}; "
            "make the artifacts again"
        ) from e
    try:
        module = api.Module(str(layout.training_model), state, str(layout.eval_model))
        made = api.Optimizer(str(layout.optimizer_model), module) if optimizer else None
    except RuntimeError as e:
        raise ArtifactsError(
            f"onnxruntime cannot load the training models of {str(artifacts)!r} with this "
            f"checkpoint: {library_message(e)}; make the artifacts again"
        ) from e
    return state, module, made


def selftest_in_child(job: JSON) -> JSON:
    """The ``selftest`` task of :mod:`onnxfix.training.isolation`: JSON in, JSON out."""
    return self_test(SelfTestJob.from_json(job)).to_json()


def self_test(job: SelfTestJob) -> SelfTestResult:
    """Load the artifacts, run a step on random batches until one gives gradients, take the
    optimizer step (unless the job leaves it out), and check what the step must not change."""
    artifacts = Path(job.artifacts)
    manifest = load_manifest(artifacts)
    set_stage("loading the artifacts with the training API")
    state, module, optimizer = open_session(artifacts, optimizer=job.optimizer_step)
    # Digests, not copies: a frozen backbone can be most of the weights.
    frozen = {name: tensor_digest(state.parameters[name].data) for name in manifest.frozen}
    module.train()
    if job.data is not None:
        loss, no_grad, scale = _step_on_data(state, module, manifest, job.data)
    else:
        loss, no_grad, scale = _step_with_gradients(state, module, manifest)
    if optimizer is not None:
        set_stage("running an optimizer step")
        optimizer.step()
    module.lazy_reset_grad()
    _check_after_step(state, manifest, frozen, loss, no_grad)
    warning = None
    if len(no_grad) == len(manifest.trainable):
        on = (
            f"the first batch of {job.data!r}"
            if job.data is not None
            else "random batches of width " + ", ".join(f"{s:g}" for s in BATCH_SCALES)
        )
        warning = (
            f"every gradient was exactly 0 on {on}. The artifacts are sound (the step ran, "
            "finite, the frozen tensors bit-identical), but the model's output saturates "
            "there (a softmax or sigmoid at its end, a ReLU cut off) or the loss does not "
            "depend on what trains: check that the loss falls on real data"
            + (
                f" (make-artifacts {param('self_test_data')} DATA.npz runs this check on it)"
                if job.data is None
                else ""
            )
        )
    return SelfTestResult(
        loss=loss,
        zero_gradient=tuple(no_grad),
        frozen_checked=len(frozen),
        batch_scale=scale,
        optimizer_step=job.optimizer_step,
        warning=warning,
    )


def _step_on_data(
    state: Any, module: Any, manifest: Manifest, data: str
) -> tuple[float, list, float]:
    """Forward and backward on the first batch of the user's data (as train reads it)."""
    from onnxfix.training.data import load_dataset

    set_stage("reading the self-test data")
    arrays, count = load_dataset(data, manifest)
    fixed = manifest.fixed_batch
    size = fixed if fixed is not None else min(count, 32)
    if count < size:
        raise ArtifactsError(
            f"{str(data)!r} has {count} samples, fewer than the model's fixed batch of {size}"
        )
    set_stage("running a training step (forward and backward) on the data")
    try:
        out = module(*[a[:size] for a in arrays])
    except RuntimeError as e:
        raise TrainingStepError(f"{STEP_FAILED} {_ort_message(e)}") from e
    loss = float(np.asarray(out[0] if isinstance(out, (list, tuple)) else out))
    return loss, _without_gradient(state, manifest), 1.0


def _without_gradient(state: Any, manifest: Manifest) -> list[str]:
    """The trainable tensors whose gradient is exactly 0; a non-finite one is refused."""
    no_grad = []
    for name in manifest.trainable:
        grad = np.asarray(state.parameters[name].grad)
        if not np.all(np.isfinite(grad)):
            raise ArtifactsError(f"self-test: parameter {name!r} received a non-finite gradient")
        if not np.any(grad):
            no_grad.append(name)
    return no_grad


def _step_with_gradients(state: Any, module: Any, manifest: Manifest) -> tuple[float, list, float]:
    """Forward and backward on random batches of growing width (BATCH_SCALES) until some
    trainable tensor gets a gradient; the loss, the tensors without one, and the width."""
    loss, no_grad, scale = float("nan"), list(manifest.trainable), BATCH_SCALES[0]
    for scale in BATCH_SCALES:
        set_stage("making a synthetic batch")
        batch = synthetic_batch(manifest, scale=scale)
        set_stage("running a training step (forward and backward)")
        try:
            out = module(*batch)
        except RuntimeError as e:  # ONNX Runtime's kernels fail with RuntimeError, own text
            raise TrainingStepError(f"{STEP_FAILED} {_ort_message(e)}") from e
        loss = float(np.asarray(out[0] if isinstance(out, (list, tuple)) else out))
        no_grad = _without_gradient(state, manifest)
        if len(no_grad) < len(manifest.trainable):
            break
        module.lazy_reset_grad()
    return loss, no_grad, scale


def _check_after_step(
    state: Any, manifest: Manifest, frozen: dict[str, str], loss: float, no_grad: list[str]
) -> None:
    """The loss and the parameters are finite, the frozen tensors unchanged and flagged frozen,
    and some trainable tensor got a gradient."""
    if not np.isfinite(loss):
        raise ArtifactsError(f"self-test: the loss on a synthetic batch is {loss}")
    broken = [n for n in manifest.trainable if not np.all(np.isfinite(state.parameters[n].data))]
    if broken:
        raise ArtifactsError(
            f"self-test: one optimizer step made {len(broken)} parameters non-finite "
            f"({', '.join(broken[:3])}{'...' if len(broken) > 3 else ''}): the gradients overflow "
            "float32, so the model's activations are far too large to train (placeholder or "
            "unnormalised weights?)"
        )
    changed = [
        n for n, before in frozen.items() if tensor_digest(state.parameters[n].data) != before
    ]
    if changed:
        raise ArtifactsError(
            f"self-test: frozen tensors changed in a training step: {', '.join(changed)}"
        )
    not_trainable_flag = [n for n in manifest.frozen if state.parameters[n].requires_grad]
    if not_trainable_flag:
        raise ArtifactsError(
            f"self-test: frozen tensors are marked trainable in the checkpoint: {', '.join(not_trainable_flag)}"
        )

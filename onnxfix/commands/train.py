"""``train``: the on-device training loop, run on a desktop with the same API calls an
Android, iOS or C++ app makes (CheckpointState, Module, Optimizer)."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import (
    ModelFileError,
    TrainingDataError,
    TrainingDivergedError,
    VerifyError,
    param,
)
from onnxfix.modelio.targets import Read, Write, check_writes
from onnxfix.outputs import check_output, temp_prefix, write_error, writing
from onnxfix.provenance import tensor_digest
from onnxfix.training.data import load_dataset
from onnxfix.training.features import SplitData
from onnxfix.training.layout import (
    CHECKPOINT,
    ArtifactsLayout,
    Manifest,
    is_artifact_file,
    is_feature_file,
    load_manifest,
)

__all__ = ["EpochResult", "TrainResult", "train"]

Progress = Callable[[int, int, int, float], None]  # epoch, step, steps, running loss


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float | None


@dataclass(frozen=True)
class TrainResult:
    epochs: list[EpochResult]
    checkpoint: Path
    fixed_checked: int
    dropped: int  # samples left out because the model's batch size is fixed
    features: tuple[SplitData, ...] = ()  # split artifacts: the data's features, then val's


def _fixed_batch(manifest: Manifest) -> int | None:
    dims = {s.shape[0] for s in manifest.inputs if s.shape}
    fixed = [d for d in dims if isinstance(d, int) and d > 0]
    return fixed[0] if fixed else None


def train(
    artifacts: str | os.PathLike,
    data: str | os.PathLike,
    *,
    epochs: int = 1,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    val: str | os.PathLike | None = None,
    checkpoint_out: str | os.PathLike | None = None,
    progress: Progress | None = None,
    feature_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train for ``epochs`` over ``data`` and save the checkpoint; the fixed kernels must not move.

    On artifacts made with ``split``, the prefix runs over ``data`` (and ``val``) once, its
    outputs cached in the artifacts' ``features/`` (:mod:`onnxfix.training.features`), and the
    head trains on them.
    """
    from onnxfix.training.selftest import open_session

    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise TrainingDataError(
            f"{param('lr')} {lr!r} is not a learning rate: give a finite number above 0, such as 0.001"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TrainingDataError(
            f"{param('seed')} {seed!r} is not a seed: give a whole number, 0 or more"
        )
    artifacts = Path(artifacts)
    manifest = load_manifest(artifacts)
    features: list[SplitData] = []
    if manifest.split is not None:  # the head trains on the prefix's outputs, computed once
        from onnxfix.training.features import split_arrays

        features.append(split_arrays(artifacts, manifest, Path(data), progress=feature_progress))
        arrays, count = features[0].arrays, features[0].count
        if val is not None:
            features.append(split_arrays(artifacts, manifest, Path(val), progress=feature_progress))
        val_arrays = features[1].arrays if val is not None else None
    else:
        arrays, count = load_dataset(data, manifest)
        val_arrays = load_dataset(val, manifest)[0] if val is not None else None
    fixed_batch = _fixed_batch(manifest)
    if fixed_batch is not None and batch_size not in (None, fixed_batch):
        raise TrainingDataError(
            f"the model was exported with a fixed batch size of {fixed_batch}; use "
            f"{param('batch_size:value', 'batch_size=')}{fixed_batch} "
            "or re-export it with a dynamic batch axis"
        )
    batch_size = batch_size or fixed_batch or 32
    if batch_size < 1 or epochs < 1:
        raise TrainingDataError(f"{param('batch_size')} and {param('epochs')} must be at least 1")
    if fixed_batch is not None and count < fixed_batch:
        raise TrainingDataError(
            f"{str(data)!r} has {count} samples, fewer than the model's fixed batch of {fixed_batch}"
        )
    layout = ArtifactsLayout(artifacts)
    out = Path(checkpoint_out) if checkpoint_out is not None else layout.checkpoint
    check_output(out, what="checkpoint")  # before training, not after it
    # The checkpoint is replaced by design; no other file this run reads may be (data, val, the
    # artifacts' models), however spelled.
    check_writes(
        [Read(Path(data), "the training data")]
        + ([Read(Path(val), "the validation data")] if val is not None else [])
        + [
            Read(artifacts / e.name, "the artifacts' file")
            for e in sorted(os.scandir(artifacts), key=lambda e: e.name)
            if is_artifact_file(e.name) and e.name != CHECKPOINT
        ]
        + [  # split artifacts: the cached features the head trains on, memory-mapped
            Read(layout.features / e.name, "the artifacts' cached features")
            for e in (
                sorted(os.scandir(layout.features), key=lambda e: e.name)
                if manifest.split is not None and layout.features.is_dir()
                else []
            )
            if is_feature_file(e.name)
        ],
        [Write(out, param("checkpoint_out"))],
    )

    state, module, optimizer = open_session(artifacts)
    if lr is not None:
        optimizer.set_learning_rate(lr)
    rng = np.random.default_rng(seed)
    steps = count // batch_size if fixed_batch else -(-count // batch_size)
    history = []
    diverged = _Divergence(out, lr)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(count)
        module.train()
        total = 0.0
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = module(*[a[idx] for a in arrays])
            value = float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss))
            # Checked before the optimizer step, which would spread a NaN to every weight.
            if not math.isfinite(value):
                raise diverged(f"at epoch {epoch}, step {step + 1} of {steps}: the loss is {value}")
            optimizer.step()
            module.lazy_reset_grad()
            total += value
            if progress is not None:
                progress(epoch, step + 1, steps, total / (step + 1))
        broken = _first_nonfinite(state, manifest.trainable)
        if broken is not None:
            raise diverged(
                f"at epoch {epoch}, step {steps} of {steps}: parameter {broken[0]!r} became "
                f"{broken[1]}"
            )
        val_loss = (
            _evaluate(module, val_arrays, batch_size, fixed_batch)
            if val_arrays is not None
            else None
        )
        if val_loss is not None and not math.isfinite(val_loss):
            raise diverged(f"after epoch {epoch}: the validation loss is {val_loss}")
        history.append(EpochResult(epoch, total / steps, val_loss))
    checked = _check_fixed(state, manifest)
    _save_checkpoint(state, out)
    return TrainResult(
        history,
        out,
        checked,
        count - steps * batch_size if fixed_batch else 0,
        tuple(features),
    )


def _evaluate(module, arrays: list[np.ndarray], batch_size: int, fixed_batch: int | None) -> float:
    module.eval()
    count = len(arrays[0])
    steps = count // batch_size if fixed_batch else -(-count // batch_size)
    losses, weights = [], []
    for step in range(steps):
        batch = [a[step * batch_size : (step + 1) * batch_size] for a in arrays]
        loss = module(*batch)
        losses.append(float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss)))
        weights.append(len(batch[0]))
    return float(np.average(losses, weights=weights)) if losses else float("nan")


class _Divergence:
    """The error for a run whose loss or parameters stopped being finite: where, what was kept,
    and what to change."""

    def __init__(self, out: Path, lr: float | None) -> None:
        self.out, self.lr = out, lr

    def __call__(self, where: str) -> TrainingDivergedError:
        kept = (
            f"nothing was saved, {str(self.out)!r} keeps its previous values"
            if self.out.exists()
            else "nothing was saved"
        )
        lower = (
            f"lower {param('lr')} (it was {self.lr:g})"
            if self.lr is not None
            else f"lower the learning rate with {param('lr')}"
        )
        return TrainingDivergedError(
            f"training diverged {where}; {kept}. {lower[0].upper()}{lower[1:]}, or check the data"
        )


def _first_nonfinite(state: Any, names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first trainable parameter holding NaN or infinity, and that value.

    Run once per epoch, not per step: it reads every trainable weight, which costs a twelfth of
    a step on a weight-heavy model with small batches (measured: a 4096x4096 Gemm, batch 2,
    10 ms against 116 ms; on samples/edge_cnn.onnx 0.07 ms against 4.4 ms), while a NaN weight
    shows in the next step's loss, which is checked at every step for free. The last check,
    before saving, is the one that matters: after the last step there is no next loss.
    """
    for name in names:
        values = np.asarray(state.parameters[name].data)
        finite = np.isfinite(values)
        if not finite.all():
            return name, f"{float(values[~finite][0])}"
    return None


def _check_fixed(state: Any, manifest: Manifest) -> int:
    # Split artifacts: the prefix's fixed kernels are not in the checkpoint, nothing trains them.
    held = set(manifest.trainable) | set(manifest.frozen)
    for name, digest in manifest.fixed_kernels.items():
        if manifest.split is not None and name not in held:
            continue
        if tensor_digest(np.asarray(state.parameters[name].data)) != digest:
            raise VerifyError(
                f"fixed kernel {name!r} changed during training; the checkpoint was not saved"
            )
    return len([n for n in manifest.fixed_kernels if manifest.split is None or n in held])


def _save_checkpoint(state, out: Path) -> None:
    """Save under a temporary name beside ``out`` and rename: a failure leaves ``out`` as it
    was and no temporary file behind."""
    from onnxfix._proto import library_message
    from onnxfix.training.ort import training_api

    what = f"checkpoint {str(out)!r}"
    tmp = out.parent / f"{temp_prefix(out)}tmp"
    try:
        with writing(what):
            try:
                training_api().CheckpointState.save_checkpoint(state, str(tmp))
            except RuntimeError as e:  # ONNX Runtime writes the file: its text, no own type
                # It ends "error:<strerror> errno:<n>" when the write failed.
                code = re.search(r"errno:(\d+)", str(e))
                if code is not None:
                    number = int(code.group(1))
                    raise write_error(OSError(number, os.strerror(number)), what) from e
                raise ModelFileError(
                    f"cannot write {what}: onnxruntime could not save it "
                    f"({library_message(e)}); save it elsewhere. Nothing was saved"
                ) from e
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):  # a read-only folder refuses even that
            tmp.unlink(missing_ok=True)

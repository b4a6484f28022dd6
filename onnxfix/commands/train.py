"""``train``: the on-device training loop, run on a desktop with the same API calls an
Android, iOS or C++ app makes (CheckpointState, Module, Optimizer)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.errors import TrainingDataError, VerifyError, param
from onnxfix.provenance import tensor_digest
from onnxfix.training.data import load_dataset
from onnxfix.training.layout import ArtifactsLayout, Manifest, load_manifest

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
) -> TrainResult:
    """Train for ``epochs`` over ``data`` and save the checkpoint; the fixed kernels must not move."""
    from onnxfix.training.selftest import open_session

    artifacts = Path(artifacts)
    manifest = load_manifest(artifacts)
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
    out = (
        Path(checkpoint_out)
        if checkpoint_out is not None
        else ArtifactsLayout(artifacts).checkpoint
    )

    state, module, optimizer = open_session(artifacts)
    if lr is not None:
        optimizer.set_learning_rate(lr)
    rng = np.random.default_rng(seed)
    steps = count // batch_size if fixed_batch else -(-count // batch_size)
    history = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(count)
        module.train()
        total = 0.0
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            loss = module(*[a[idx] for a in arrays])
            optimizer.step()
            module.lazy_reset_grad()
            total += float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss))
            if progress is not None:
                progress(epoch, step + 1, steps, total / (step + 1))
        val_loss = (
            _evaluate(module, val_arrays, batch_size, fixed_batch)
            if val_arrays is not None
            else None
        )
        history.append(EpochResult(epoch, total / steps, val_loss))
    checked = _check_fixed(state, manifest)
    _save_checkpoint(state, out)
    return TrainResult(history, out, checked, count - steps * batch_size if fixed_batch else 0)


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


def _check_fixed(state: Any, manifest: Manifest) -> int:
    for name, digest in manifest.fixed_kernels.items():
        if tensor_digest(np.asarray(state.parameters[name].data)) != digest:
            raise VerifyError(
                f"fixed kernel {name!r} changed during training; the checkpoint was not saved"
            )
    return len(manifest.fixed_kernels)


def _save_checkpoint(state, out: Path) -> None:
    from onnxfix.training.ort import training_api

    tmp = out.parent / f".{out.name}.tmp"
    training_api().CheckpointState.save_checkpoint(state, str(tmp))
    os.replace(tmp, out)

"""``train``: the on-device training loop, run on a desktop with the same API calls an
Android, iOS or C++ app makes (CheckpointState, Module, Optimizer)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
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
from onnxfix.training.metrics import Metric, evaluate_module

__all__ = ["EpochResult", "StepLog", "TrainResult", "train"]

Progress = Callable[[int, int, int, float], None]  # epoch, step, steps, running loss
KEEP_BEST = ("val-loss", "val-accuracy")


@dataclass(frozen=True)
class EpochResult:
    """One epoch, as its end reports it (``on_epoch``) and the log records it."""

    epoch: int
    train_loss: float
    val_loss: float | None
    train_accuracy: float | None = None  # cross-entropy and bce artifacts (metric_output)
    val_accuracy: float | None = None
    lr: float | None = None
    seconds: float = 0.0  # since training started
    saved: tuple[str, ...] = ()  # checkpoints written at its end

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": None,
            "loss": self.train_loss,
            "accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "lr": self.lr,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class StepLog:
    """Every ``log_every`` steps: the mean loss (and accuracy) over those steps."""

    epoch: int
    step: int
    steps: int
    loss: float
    accuracy: float | None
    lr: float | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "step",
            "epoch": self.epoch,
            "step": self.step,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "val_loss": None,
            "val_accuracy": None,
            "lr": self.lr,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TrainResult:
    epochs: list[EpochResult]
    checkpoint: Path
    fixed_checked: int
    dropped: int  # samples left out because the model's batch size is fixed
    features: tuple[SplitData, ...] = ()  # split artifacts: the data's features, then val's
    resumed_from: int = 0  # the epochs the checkpoint resumed from had trained


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
    on_epoch: Callable[[EpochResult], None] | None = None,
    log_every: int | None = None,
    on_log: Callable[[StepLog], None] | None = None,
    log: str | os.PathLike | None = None,
    save_every_epoch: bool = False,
    keep_best: str | None = None,
    resume: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
) -> TrainResult:
    """Train for ``epochs`` over ``data`` and save the checkpoint; the fixed kernels must not move.

    Each epoch's end is reported to ``on_epoch`` as it happens, and every ``log_every`` steps
    to ``on_log``; ``log`` writes both as JSON lines (or CSV, by its extension). Samples are
    shuffled per epoch from ``seed`` and the epoch number, so a run resumed from a checkpoint
    (``resume``: one saved with ``save_every_epoch`` or ``keep_best``, which hold the optimizer
    state and the epoch) goes on exactly as the uninterrupted run would have, up to epoch
    ``epochs``. ``save_every_epoch`` writes ``<checkpoint>.epoch<N>``; ``keep_best``
    (``val-loss`` or ``val-accuracy``, with ``val``) keeps the best epoch's in
    ``<checkpoint>.best``. ``plot`` draws the loss (and accuracy) curves into that PNG at the
    end (matplotlib, the ``plot`` extra: checked before training).

    On artifacts made with ``split``, the prefix runs over ``data`` (and ``val``) once, its
    outputs cached in the artifacts' ``features/`` (:mod:`onnxfix.training.features`), and the
    head trains on them.
    """
    from onnxfix.training.selftest import open_session

    _check_options(lr, seed, log_every, keep_best, val)
    if plot is not None:  # a missing matplotlib is said before training, not after it
        from onnxfix.plots import need_matplotlib

        need_matplotlib()
    artifacts = Path(artifacts)
    manifest = load_manifest(artifacts)
    if keep_best == "val-accuracy" and manifest.metric_output is None:
        raise TrainingDataError(
            f"{param('keep_best')} val-accuracy needs artifacts of a cross-entropy or bce loss "
            "made by this onnxfix (they output the logits); use val-loss"
        )
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
    fixed_batch = manifest.fixed_batch
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
    writes = [Write(out, param("checkpoint_out"))]
    if log is not None:
        check_output(Path(log), what="log file")
        writes.append(Write(Path(log), param("log")))
    if keep_best is not None:
        writes.append(Write(_best_path(out), param("keep_best")))
    if save_every_epoch:
        writes += [
            Write(_epoch_path(out, e), param("save_every_epoch")) for e in range(1, epochs + 1)
        ]
    if plot is not None:
        check_output(Path(plot), what="picture")
        writes.append(Write(Path(plot), param("plot")))
    # The checkpoint is replaced by design; no other file this run reads may be (data, val, the
    # artifacts' models, the checkpoint resumed from), however spelled.
    check_writes(
        [Read(Path(data), "the training data")]
        + ([Read(Path(val), "the validation data")] if val is not None else [])
        + ([Read(Path(resume), "the checkpoint resumed from")] if resume is not None else [])
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
        writes,
    )

    state, module, optimizer = open_session(artifacts, Path(resume) if resume else None)
    done = _resumed_epoch(state, resume, epochs)
    if lr is None and resume is not None and LR_PROPERTY in _property_names(state):
        lr = float(state.properties[LR_PROPERTY])  # the resumed run's rate goes on
    if lr is not None:
        optimizer.set_learning_rate(lr)
    steps = count // batch_size if fixed_batch else -(-count // batch_size)
    history = []
    logged: list[StepLog] = []
    diverged = _Divergence(out, lr)
    metric = Metric(module, manifest)
    best = _Best(keep_best, state)
    started = time.perf_counter()
    with _log_writer(log) as write_log:
        for epoch in range(done + 1, epochs + 1):
            # Seeded by the epoch too: a resumed run shuffles as the uninterrupted one did.
            order = np.random.default_rng([seed, epoch]).permutation(count)
            module.train()
            total, counts = 0.0, metric.zero()
            window: list[tuple[float, np.ndarray]] = []
            for step in range(steps):
                idx = order[step * batch_size : (step + 1) * batch_size]
                batch = [a[idx] for a in arrays]
                outputs = module(*batch)
                value = metric.loss(outputs)
                # Checked before the optimizer step, which would spread a NaN to every weight.
                if not math.isfinite(value):
                    raise diverged(
                        f"at epoch {epoch}, step {step + 1} of {steps}: the loss is {value}"
                    )
                optimizer.step()
                module.lazy_reset_grad()
                total += value
                hits = metric.count(outputs, batch)
                counts += hits
                window.append((value, hits))
                if progress is not None:
                    progress(epoch, step + 1, steps, total / (step + 1))
                if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
                    entry = StepLog(
                        epoch,
                        step + 1,
                        steps,
                        float(np.mean([v for v, _ in window])),
                        metric.accuracy(sum((h for _, h in window), metric.zero())),
                        _lr(optimizer),
                        time.perf_counter() - started,
                    )
                    window = []
                    logged.append(entry)
                    write_log(entry.to_json())
                    if on_log is not None:
                        on_log(entry)
            broken = _first_nonfinite(state, manifest.trainable)
            if broken is not None:
                raise diverged(
                    f"at epoch {epoch}, step {steps} of {steps}: parameter {broken[0]!r} became "
                    f"{broken[1]}"
                )
            val_loss, val_accuracy = (
                evaluate_module(module, metric, val_arrays, batch_size, fixed_batch)
                if val_arrays is not None
                else (None, None)
            )
            if val_loss is not None and not math.isfinite(val_loss):
                raise diverged(f"after epoch {epoch}: the validation loss is {val_loss}")
            saved = []
            state.properties[EPOCH_PROPERTY] = epoch
            if lr is not None:
                state.properties[LR_PROPERTY] = lr
            if save_every_epoch:
                _check_fixed(state, manifest)
                _save_checkpoint(state, _epoch_path(out, epoch), optimizer_state=True)
                saved.append(str(_epoch_path(out, epoch)))
            if best.improved(val_loss, val_accuracy):
                _check_fixed(state, manifest)
                best.record(epoch)
                _save_checkpoint(state, _best_path(out), optimizer_state=True)
                saved.append(str(_best_path(out)))
            result = EpochResult(
                epoch,
                total / steps,
                val_loss,
                metric.accuracy(counts),
                val_accuracy,
                _lr(optimizer),
                time.perf_counter() - started,
                tuple(saved),
            )
            history.append(result)
            write_log(result.to_json())
            if on_epoch is not None:
                on_epoch(result)
    checked = _check_fixed(state, manifest)
    _save_checkpoint(state, out)
    if plot is not None:
        from onnxfix.plots import draw_history

        draw_history(history, logged, plot)
    return TrainResult(
        history,
        out,
        checked,
        count - steps * batch_size if fixed_batch else 0,
        tuple(features),
        done,
    )


EPOCH_PROPERTY = "onnxfix.epoch"  # the epochs a saved checkpoint has trained
LR_PROPERTY = "onnxfix.lr"  # the learning rate it trained with (ORT's state does not keep it)
BEST_PROPERTY = "onnxfix.best"  # keep_best: the best epoch and its value, "epoch=3 val-loss=0.21"
LOG_FIELDS = (
    "kind", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
)  # fmt: skip


def _check_options(lr, seed, log_every, keep_best, val) -> None:
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise TrainingDataError(
            f"{param('lr')} {lr!r} is not a learning rate: give a finite number above 0, such as 0.001"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TrainingDataError(
            f"{param('seed')} {seed!r} is not a seed: give a whole number, 0 or more"
        )
    if log_every is not None and (isinstance(log_every, bool) or log_every < 1):
        raise TrainingDataError(
            f"{param('log_every')} {log_every!r} must be a whole number, 1 or more"
        )
    if keep_best is not None and keep_best not in KEEP_BEST:
        raise TrainingDataError(
            f"{param('keep_best')} {keep_best!r} is not one of: {', '.join(KEEP_BEST)}"
        )
    if keep_best is not None and val is None:
        raise TrainingDataError(
            f"{param('keep_best')} {keep_best} compares epochs on validation data: give "
            f"{param('val')}"
        )


def _epoch_path(out: Path, epoch: int) -> Path:
    return out.with_name(f"{out.name}.epoch{epoch}")


def _best_path(out: Path) -> Path:
    return out.with_name(f"{out.name}.best")


def _lr(optimizer) -> float | None:
    try:
        return float(optimizer.get_learning_rate())
    except (AttributeError, RuntimeError):
        return None


def _property_names(state: Any) -> set[str]:
    return {name for name, _ in state.properties}


def _resumed_epoch(state: Any, resume, epochs: int) -> int:
    """The epochs the checkpoint resumed from has trained (0 without one)."""
    if resume is None:
        return 0
    try:
        done = int(state.properties[EPOCH_PROPERTY])
    except (KeyError, RuntimeError, TypeError, ValueError):
        raise TrainingDataError(
            f"checkpoint {str(resume)!r} records no epoch ({EPOCH_PROPERTY!r}); resume from a "
            f"checkpoint train saved with {param('save_every_epoch')} or {param('keep_best')}"
        ) from None
    if done >= epochs:
        raise TrainingDataError(
            f"checkpoint {str(resume)!r} has trained {done} epochs already; give "
            f"{param('epochs')} above {done} to train more"
        )
    return done


class _Best:
    """keep_best: whether an epoch's validation result is the best so far."""

    def __init__(self, keep: str | None, state: Any) -> None:
        self.keep, self.state = keep, state
        self.value: float | None = None

    def improved(self, val_loss: float | None, val_accuracy: float | None) -> bool:
        if self.keep is None:
            return False
        value = val_loss if self.keep == "val-loss" else val_accuracy
        if value is None:
            return False
        if self.value is not None and (
            value >= self.value if self.keep == "val-loss" else value <= self.value
        ):
            return False
        self.value = value
        return True

    def record(self, epoch: int) -> None:
        self.state.properties[BEST_PROPERTY] = f"epoch={epoch} {self.keep}={self.value:.6g}"


@contextlib.contextmanager
def _log_writer(path: str | os.PathLike | None):
    """A function writing one record per line to ``path`` (JSON lines, or CSV for ``.csv``),
    flushed as it goes so a reader (``tail -f``) sees each line when it is made."""
    if path is None:
        yield lambda record: None
        return
    path = Path(path)
    with writing(f"log file {str(path)!r}"), open(path, "w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            import csv

            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()

            def write(record: dict) -> None:
                writer.writerow({k: "" if record[k] is None else record[k] for k in LOG_FIELDS})
                f.flush()

        else:

            def write(record: dict) -> None:
                f.write(json.dumps(record) + "\n")
                f.flush()

        yield write


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


def _save_checkpoint(state, out: Path, *, optimizer_state: bool = False) -> None:
    """Save under a temporary name beside ``out`` and rename: a failure leaves ``out`` as it
    was and no temporary file behind. ``optimizer_state``: with AdamW's moments and step (a
    checkpoint to resume from)."""
    from onnxfix._proto import library_message
    from onnxfix.training.ort import training_api

    what = f"checkpoint {str(out)!r}"
    tmp = out.parent / f"{temp_prefix(out)}tmp"
    try:
        with writing(what):
            try:
                training_api().CheckpointState.save_checkpoint(state, str(tmp), optimizer_state)
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

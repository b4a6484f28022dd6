"""train as users watch it: a line per epoch as it ends, accuracy, the log file, checkpoints per
epoch and the best one, resuming exactly where a run stopped, and no ONNX Runtime noise."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfix import TrainingDataError, export_model, make_artifacts, set_kernel, train
from onnxfix.training.checkpoint import read_checkpoint
from tests.support.paths import SAMPLES
from tests.support.runtime import session


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Sample artifacts (AdamW and SGD) and the sample's data cut into training and validation."""
    tmp = tmp_path_factory.mktemp("loop")
    set_kernel(SAMPLES / "edge_cnn.onnx", tmp / "f.onnx", layers="edges", kernel="sobel-x")
    make_artifacts(tmp / "f.onnx", tmp / "adamw", loss="cross-entropy", self_test=False)
    make_artifacts(
        tmp / "f.onnx", tmp / "sgd", loss="cross-entropy", optimizer="sgd", self_test=False
    )
    d = np.load(SAMPLES / "edges_train.npz")
    np.savez(tmp / "train.npz", image=d["image"][:192], labels=d["labels"][:192])
    np.savez(tmp / "val.npz", image=d["image"][192:], labels=d["labels"][192:])
    return {"root": tmp, "adamw": tmp / "adamw", "sgd": tmp / "sgd"}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _values(path: Path) -> dict[str, bytes]:
    stored = read_checkpoint(path)
    return {name: p.read() for name, p in stored.parameters.items()}


def test_each_epoch_is_reported_as_it_ends_with_accuracy(made, tmp_path):
    art = _copy(made["adamw"], tmp_path / "art")
    seen = []
    result = train(
        art, made["root"] / "train.npz", val=made["root"] / "val.npz", epochs=3, lr=0.01,
        on_epoch=seen.append,
    )  # fmt: skip
    assert seen == result.epochs
    assert [e.epoch for e in seen] == [1, 2, 3]
    assert all(0 <= e.train_accuracy <= 1 and 0 <= e.val_accuracy <= 1 for e in seen)
    assert seen[-1].val_loss < seen[0].val_loss
    # The last epoch's validation accuracy is the exported model's, computed independently.
    export_model(art, tmp_path / "m.onnx")
    val = np.load(made["root"] / "val.npz")
    (logits,) = session(onnx.load(str(tmp_path / "m.onnx"))).run(None, {"image": val["image"]})
    assert seen[-1].val_accuracy == pytest.approx(np.mean(logits.argmax(1) == val["labels"]))


def test_the_log_file_holds_every_line_as_json_or_csv(made, tmp_path):
    art = _copy(made["adamw"], tmp_path / "art")
    steps = []
    result = train(
        art, made["root"] / "train.npz", epochs=2, batch_size=32, lr=0.01, log_every=4,
        on_log=steps.append, log=tmp_path / "log.jsonl",
    )  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["epoch"], r["step"]) for r in records] == [
        ("step", 1, 4), ("step", 1, 6), ("epoch", 1, None),
        ("step", 2, 4), ("step", 2, 6), ("epoch", 2, None),
    ]  # fmt: skip
    assert [r["loss"] for r in records if r["kind"] == "epoch"] == [
        e.train_loss for e in result.epochs
    ]
    assert [r["loss"] for r in records if r["kind"] == "step"] == [s.loss for s in steps]
    assert records[0]["lr"] == pytest.approx(0.01)
    # The step lines' losses are the means of their windows: 4 steps, then 2.
    assert (4 * records[0]["loss"] + 2 * records[1]["loss"]) / 6 == pytest.approx(
        records[2]["loss"]
    )
    train(art, made["root"] / "train.npz", lr=0.01, log=tmp_path / "log.csv")
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert list(rows[0]) == [
        "kind", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
    ]  # fmt: skip
    assert [(r["kind"], r["epoch"], r["step"], r["val_loss"]) for r in rows] == [
        ("epoch", "1", "", "")
    ]


@pytest.mark.slow  # the fast run stays under a minute
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("lr_again", [True, False], ids=["lr-given-again", "lr-from-checkpoint"])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(
    made, tmp_path, optimizer, lr_again
):
    whole = _copy(made[optimizer], tmp_path / "whole")
    parts = _copy(made[optimizer], tmp_path / "parts")
    data = made["root"] / "train.npz"
    train(whole, data, epochs=4, lr=0.01, seed=3)
    train(parts, data, epochs=2, lr=0.01, seed=3, save_every_epoch=True)
    result = train(
        parts, data, epochs=4, lr=0.01 if lr_again else None, seed=3,
        resume=parts / "checkpoint.epoch2",
    )  # fmt: skip
    assert result.resumed_from == 2
    assert [e.epoch for e in result.epochs] == [3, 4]
    assert _values(parts / "checkpoint") == _values(whole / "checkpoint")


@pytest.mark.slow  # the fast run stays under a minute
def test_keep_best_keeps_the_epoch_with_the_best_validation(made, tmp_path):
    art = _copy(made["adamw"], tmp_path / "art")
    result = train(
        art, made["root"] / "train.npz", val=made["root"] / "val.npz", epochs=4, lr=0.05,
        save_every_epoch=True, keep_best="val-loss",
    )  # fmt: skip
    best = min(result.epochs, key=lambda e: e.val_loss)
    assert _values(art / "checkpoint.best") == _values(art / f"checkpoint.epoch{best.epoch}")
    props = read_checkpoint(art / "checkpoint.best").properties
    assert props["onnxfix.best"] == f"epoch={best.epoch} val-loss={best.val_loss:.6g}"
    # A saved checkpoint exports and verifies like the final one.
    export_model(art, tmp_path / "best.onnx", checkpoint=art / "checkpoint.best")
    from onnxfix import verify

    assert verify(tmp_path / "best.onnx").ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"keep_best": "val-loss"},
            "keep_best val-loss compares epochs on validation data: give val",
        ),
        ({"keep_best": "best"}, "keep_best 'best' is not one of: val-loss, val-accuracy"),
        ({"log_every": 0}, "log_every 0 must be a whole number, 1 or more"),
        ({"resume": "checkpoint"}, "records no epoch ('onnxfix.epoch'); resume from a checkpoint"),
    ],
)
def test_options_that_cannot_work_are_refused_before_training(made, tmp_path, kwargs, message):
    art = _copy(made["adamw"], tmp_path / "art")
    if "resume" in kwargs:  # the checkpoint make-artifacts wrote: it records no epoch
        (tmp_path / "plain").write_bytes((art / "checkpoint").read_bytes())
        kwargs = {"resume": tmp_path / "plain"}
    before = _values(art / "checkpoint")
    with pytest.raises(TrainingDataError) as e:
        train(art, made["root"] / "train.npz", **kwargs)
    assert message in str(e.value)
    assert _values(art / "checkpoint") == before


def test_resuming_onto_the_checkpoint_it_reads_is_refused(made, tmp_path):
    art = _copy(made["adamw"], tmp_path / "art")
    from onnxfix import ModelFileError

    with pytest.raises(ModelFileError) as e:
        train(art, made["root"] / "train.npz", resume=art / "checkpoint")
    assert "is the same file as the checkpoint resumed from" in str(e.value)


def test_resuming_a_run_that_is_done_is_refused(made, tmp_path):
    art = _copy(made["adamw"], tmp_path / "art")
    train(art, made["root"] / "train.npz", epochs=2, save_every_epoch=True)
    with pytest.raises(TrainingDataError) as e:
        train(art, made["root"] / "train.npz", epochs=2, resume=art / "checkpoint.epoch2")
    assert str(e.value) == (
        f"checkpoint {str(art / 'checkpoint.epoch2')!r} has trained 2 epochs already; give "
        "epochs above 2 to train more"
    )


@pytest.mark.slow  # the fast run stays under a minute
def test_lines_stream_through_a_pipe_and_no_runtime_noise_leaks(made, tmp_path):
    """Without a terminal (CI, | tee) each epoch's line arrives as the epoch ends, while the
    run goes on; stderr holds no ONNX Runtime warning or colour escape."""
    art = _copy(made["sgd"], tmp_path / "art")
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxfix", "train", str(art), "--data",
         str(made["root"] / "train.npz"), "--epochs", "40", "--lr", "0.01"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = proc.stdout.readline()
    running = proc.poll() is None
    rest, err = proc.communicate(timeout=300)
    assert first.startswith("epoch 1: train loss ") and ", accuracy " in first
    assert running, "the first epoch's line came only when the run ended"
    assert proc.returncode == 0
    assert rest.splitlines()[-2:] == [
        "fixed kernels unchanged: 1 checked",
        f"saved {art}/checkpoint",
    ]
    assert err == ""

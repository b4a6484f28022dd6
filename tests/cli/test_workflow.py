"""The README walkthrough on the bundled sample through the CLI, and every error path of
make-artifacts, train, export and verify (exit 1, the exact message, nothing left behind)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tests.support.factories import SOBEL_X
from tests.support.files import sha256
from tests.support.paths import SAMPLES


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """set-kernel -> make-artifacts -> train -> export on the sample, as the README does."""
    from click.testing import CliRunner

    from onnxfix.cli import cli

    folder = tmp_path_factory.mktemp("walk")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    run(
        "set-kernel",
        SAMPLES / "edge_cnn.onnx",
        "--layer",
        "edges",
        "--kernel",
        "sobel-x",
        "-o",
        folder / "fixed.onnx",
    )
    made = run(
        "make-artifacts",
        folder / "fixed.onnx",
        "--loss",
        "cross-entropy",
        "-o",
        folder / "artifacts",
    )
    ckpt_before = sha256(folder / "artifacts" / "checkpoint")
    trained = run(
        "train",
        folder / "artifacts",
        "--data",
        SAMPLES / "edges_train.npz",
        "--val",
        SAMPLES / "edges_val.npz",
        "--epochs",
        "3",
        "--lr",
        "0.01",
    )
    run("export", folder / "artifacts", "-o", folder / "finetuned.onnx")
    return folder, made, trained, ckpt_before


def test_make_artifacts_summary(trained):
    _, made, _, _ = trained
    lines = made.stdout.splitlines()
    assert lines[1] == "trainable: 5 tensors, 0.00 MB"
    assert lines[2] == "frozen:    1 tensors, 0.00 MB"
    assert lines[3].startswith("  edges.weight (fixed kernel, sha256 ")
    assert (
        "loss: cross-entropy on 'logits'; optimizer: adamw (betas 0.9,0.999, eps 1e-06, "
        "weight decay 0)"
    ) in lines
    assert "input 'image': float32 [batch, 1, 32, 32]" in lines
    assert "input 'labels': int64 [batch]" in lines
    assert lines[-1].startswith("self-test: one step ran, loss ")
    assert lines[-1].endswith(", 1 frozen tensors bit-identical")


def test_train_lowers_loss_and_keeps_kernel(trained):
    folder, _, result, before = trained
    losses = [
        float(line.split("train loss ")[1].split(",")[0])
        for line in result.stdout.splitlines()
        if line.startswith("epoch")
    ]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.9
    assert "fixed kernels unchanged: 1 checked" in result.stdout
    assert sha256(folder / "artifacts" / "checkpoint") != before  # the trained state was saved


def test_export_runs_and_holds_kernel(trained):
    folder, *_ = trained
    model = onnx.load(str(folder / "finetuned.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(weights["edges.weight"], np.broadcast_to(SOBEL_X, (4, 1, 3, 3)))
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not any("Grad" in n.op_type or "Loss" in n.op_type for n in model.graph.node)
    props = {p.key: p.value for p in model.metadata_props}
    assert set(json.loads(props["onnxfix.fixed_kernels"])) == {"edges.weight"}
    sess = ort.InferenceSession(str(folder / "finetuned.onnx"), providers=["CPUExecutionProvider"])
    data = np.load(SAMPLES / "edges_val.npz")
    logits = sess.run(None, {"image": data["image"]})[0]
    accuracy = float(np.mean(logits.argmax(1) == data["labels"]))
    assert logits.shape == (64, 2) and accuracy > 0.6


def test_verify_passes_then_fails_one_changed_value(trained, run, tmp_path):
    folder, *_ = trained
    for path in (
        folder / "finetuned.onnx",
        folder / "artifacts",
        folder / "artifacts" / "checkpoint",
    ):
        result = run("verify", path)
        assert result.exit_code == 0, result.output
        assert result.stdout.endswith("all 1 fixed kernels match their record\n")
    model = onnx.load(str(folder / "finetuned.onnx"))
    for t in model.graph.initializer:
        if t.name == "edges.weight":
            w = numpy_helper.to_array(t).copy()
            w[2, 0, 1, 1] += 0.25
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    result = run("verify", tampered)
    assert result.exit_code == 1
    assert (
        result.stdout
        == "CHANGED  edges.weight (layer /edges/Conv): largest absolute difference 0.25\n"
    )
    assert result.stderr == "Error: 1 of 1 fixed kernels differ from their record: edges.weight\n"


def test_verify_without_provenance(run):
    result = run("verify", SAMPLES / "edge_cnn.onnx")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: '{SAMPLES / 'edge_cnn.onnx'}' records no fixed kernels ('onnxfix.fixed_kernels'); there "
        "is nothing to verify. Fix kernels with 'onnxfix set-kernel' first\n"
    )


# --- error paths ---------------------------------------------------------------------------


def _fails(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: {message}\n"


def test_freeze_typo_is_an_error_and_creates_nothing(trained, run, tmp_path):
    folder, *_ = trained
    out = tmp_path / "art"
    result = run("make-artifacts", folder / "fixed.onnx", "-o", out, "--freeze", "featrues*")
    _fails(
        result,
        "--freeze 'featrues*' matches no parameter or layer; parameters: edges.bias, "
        "edges.weight, features.1.bias, features.1.weight, head.bias, head.weight",
    )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_train_typo_and_nothing_to_train(trained, run, tmp_path):
    folder, *_ = trained
    result = run("make-artifacts", folder / "fixed.onnx", "-o", tmp_path / "a", "--train", "haed*")
    assert result.exit_code == 1 and result.stderr.startswith(
        "Error: --train 'haed*' matches no parameter or layer"
    )
    result = run("make-artifacts", folder / "fixed.onnx", "-o", tmp_path / "a", "--freeze", "*")
    _fails(
        result,
        "nothing would train: the loss depends only on fixed or frozen parameters (edges.bias, "
        "edges.weight, features.1.bias, features.1.weight, head.bias, head.weight) (check --train and --freeze)",
    )
    assert list(tmp_path.iterdir()) == []


def test_non_empty_destination_refused_then_forced(trained, run, tmp_path):
    folder, *_ = trained
    out = tmp_path / "art"
    # --force replaces only artifacts onnxfix made (a folder of anything else is refused, see
    # tests/hostile/test_data_loss.py): these were trained since.
    shutil.copytree(folder / "artifacts", out)
    trained_checkpoint = sha256(out / "checkpoint")
    result = run("make-artifacts", folder / "fixed.onnx", "-o", out)
    _fails(
        result, f"'{out}' is not empty; add --force to replace its contents, or choose another -o"
    )
    assert sha256(out / "checkpoint") == trained_checkpoint
    result = run("make-artifacts", folder / "fixed.onnx", "-o", out, "--force", "--no-self-test")
    assert result.exit_code == 0, result.output
    assert sha256(out / "checkpoint") != trained_checkpoint


def test_loss_input_not_an_output(trained, run, tmp_path):
    folder, *_ = trained
    result = run(
        "make-artifacts", folder / "fixed.onnx", "-o", tmp_path / "a", "--loss-input", "probs"
    )
    _fails(result, "--loss-input 'probs' is not an output of the model; its outputs are: logits")
    assert not (tmp_path / "a").exists()


def test_leaves_no_files_in_cwd(trained, run, tmp_path, monkeypatch):
    folder, *_ = trained
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = run("make-artifacts", folder / "fixed.onnx", "-o", tmp_path / "art")
    assert result.exit_code == 0, result.output
    assert list(cwd.iterdir()) == []


def test_train_data_errors(trained, run, tmp_path):
    folder, *_ = trained
    art = tmp_path / "art"
    shutil.copytree(folder / "artifacts", art)
    before = sha256(art / "checkpoint")
    np.savez(tmp_path / "no_labels.npz", image=np.zeros((4, 1, 32, 32), np.float32))
    result = run("train", art, "--data", tmp_path / "no_labels.npz")
    _fails(
        result,
        f"'{tmp_path / 'no_labels.npz'}' lacks 'labels'; it needs one array per model input "
        "and the target: image, labels (it has: image)",
    )
    np.savez(
        tmp_path / "bad_shape.npz",
        image=np.zeros((4, 1, 28, 28), np.float32),
        labels=np.zeros(4, np.int64),
    )
    result = run("train", art, "--data", tmp_path / "bad_shape.npz")
    _fails(
        result,
        f"'{tmp_path / 'bad_shape.npz'}': 'image' has shape (4, 1, 28, 28); the model takes (N, 1, 32, 32) per batch",
    )
    np.savez(
        tmp_path / "short.npz",
        image=np.zeros((4, 1, 32, 32), np.float32),
        labels=np.zeros(3, np.int64),
    )
    result = run("train", art, "--data", tmp_path / "short.npz")
    _fails(
        result,
        f"'{tmp_path / 'short.npz'}': 'labels' has 3 samples but 'image' has 4; every array needs one entry per sample",
    )
    assert sha256(art / "checkpoint") == before


def test_export_and_train_need_artifacts(run, tmp_path):
    result = run("export", tmp_path, "-o", tmp_path / "m.onnx")
    _fails(
        result,
        f"'{tmp_path}' holds no onnxfix.json; point at a folder made by 'onnxfix make-artifacts'",
    )
    assert not (tmp_path / "m.onnx").exists()

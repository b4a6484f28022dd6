"""Cross-entropy over sequences (issue 16, item 4): [N, T, C] logits whose Softmax normalises
the last axis (CRNN/OCR recognisers) take labels [N, T]; --ignore-index leaves padding out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxfix import ArtifactsError, TrainingDataError, export_model, make_artifacts, train
from onnxfix.commands.evaluate import evaluate
from onnxfix.training.ort import training_api

C = 5


def _sequence_model(path: Path) -> Path:
    """x [N, T, 6] -> MatMul -> logits [N, T, 5] -> Softmax(axis=-1) -> probs."""
    w = np.random.default_rng(0).normal(size=(6, C)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits"], name="proj"),
            helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        ],
        "seq",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "T", 6])],
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", "T", C])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _numpy_ce(logits: np.ndarray, labels: np.ndarray, ignore: int | None = None) -> float:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    keep = labels != ignore if ignore is not None else np.ones(labels.shape, bool)
    picked = np.take_along_axis(log_p, np.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return float(-picked[keep].mean())


def _first_loss(art: Path, x: np.ndarray, labels: np.ndarray) -> float:
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(art / "checkpoint"))
    module = api.Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"))
    module.train()
    out = module(x, labels)
    return float(out[0])


@pytest.mark.parametrize("ignore", [None, -100])
def test_sequence_cross_entropy_is_over_the_last_axis(tmp_path, ignore):
    model = _sequence_model(tmp_path / "seq.onnx")
    art = tmp_path / "art"
    make_artifacts(model, art, loss="cross-entropy", ignore_index=ignore, self_test=False)
    manifest = json.loads((art / "onnxfix.json").read_text())
    assert manifest["target"] == {"name": "labels", "shape": ["N", "T"], "dtype": "int64"}
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 7, 6)).astype(np.float32)
    labels = rng.integers(0, C, (4, 7))
    if ignore is not None:
        labels[:, 5:] = ignore  # padding at the end of each sequence
    w = numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0])
    assert _first_loss(art, x, labels) == pytest.approx(_numpy_ce(x @ w, labels, ignore), rel=1e-5)


@pytest.mark.slow  # 30 epochs
def test_sequences_train_export_and_evaluate_alike(tmp_path):
    model = _sequence_model(tmp_path / "seq.onnx")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 7, 6)).astype(np.float32)
    labels = np.argmax(x[..., :C], axis=-1)  # learnable
    labels[:, 6] = -1
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    make_artifacts(model, tmp_path / "art", loss="cross-entropy", ignore_index=-1)
    result = train(tmp_path / "art", tmp_path / "d.npz", epochs=30, batch_size=8, lr=0.05)
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.epochs[-1].train_accuracy > 0.5
    export_model(tmp_path / "art", tmp_path / "e.onnx")
    on_artifacts = evaluate(tmp_path / "art", tmp_path / "d.npz", batch_size=8)
    w = numpy_helper.to_array(onnx.load(str(tmp_path / "e.onnx")).graph.initializer[0])
    assert on_artifacts.loss == pytest.approx(_numpy_ce(x @ w, labels, -1), rel=1e-5)


def test_labels_out_of_range_are_refused_and_the_ignore_index_is_named(tmp_path):
    model = _sequence_model(tmp_path / "seq.onnx")
    make_artifacts(
        model, tmp_path / "art", loss="cross-entropy", ignore_index=-100, self_test=False
    )
    labels = np.zeros((4, 7), np.int64)
    labels[1, 2] = 7
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 7, 6), np.float32), labels=labels)
    with pytest.raises(TrainingDataError) as e:
        train(tmp_path / "art", tmp_path / "d.npz")
    assert "labels[1, 2] is 7" in str(e.value)
    assert "a class index from 0 to 4 or the ignore index -100" in str(e.value)


def test_ignore_index_needs_cross_entropy(tmp_path):
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(_sequence_model(tmp_path / "s.onnx"), tmp_path / "a", ignore_index=-1)
    assert str(e.value) == "ignore_index is for cross-entropy labels; loss is mse"

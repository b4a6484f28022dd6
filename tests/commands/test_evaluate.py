"""evaluate and predict: the numbers train reports, without training, and outputs to a file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxfix import (
    ArtifactsError,
    ModelFileError,
    TrainingDataError,
    export_model,
    make_artifacts,
    set_kernel,
    train,
)
from onnxfix.commands.evaluate import evaluate, predict
from tests.support.paths import SAMPLES
from tests.support.runtime import session

VAL = SAMPLES / "edges_val.npz"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("eval")
    set_kernel(SAMPLES / "edge_cnn.onnx", tmp / "f.onnx", layers="edges", kernel="sobel-x")
    make_artifacts(tmp / "f.onnx", tmp / "art", loss="cross-entropy", self_test=False)
    result = train(tmp / "art", SAMPLES / "edges_train.npz", val=VAL, epochs=3, lr=0.01)
    export_model(tmp / "art", tmp / "ft.onnx")
    return {"tmp": tmp, "art": tmp / "art", "model": tmp / "ft.onnx", "last": result.epochs[-1]}


def test_artifacts_and_their_export_score_as_train_did(trained, run):
    last = trained["last"]
    on_artifacts = evaluate(trained["art"], VAL)
    on_model = evaluate(trained["model"], VAL, loss="cross-entropy")
    assert (on_artifacts.loss, on_artifacts.accuracy) == (last.val_loss, last.val_accuracy)
    assert on_model.loss == pytest.approx(last.val_loss, rel=1e-6)
    assert on_model.accuracy == last.val_accuracy
    r = run("evaluate", trained["art"], "--data", VAL)
    assert r.stdout == (
        f"cross-entropy loss {last.val_loss:.4f}, accuracy {last.val_accuracy:.4f} on 64 "
        "samples (the eval model)\n"
    )


def _softmax_model(path: Path) -> Path:
    """x [N, 3] -> Gemm -> Softmax: the output is probabilities."""
    w = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["z"], name="gemm"),
            helper.make_node("Softmax", ["z"], ["p"], name="softmax", axis=1),
        ],
        "sm",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_probability_output_is_scored_as_probabilities(tmp_path):
    model = _softmax_model(tmp_path / "sm.onnx")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 10)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    (p,) = session(onnx.load(str(model))).run(None, {"x": x})
    r = evaluate(model, tmp_path / "d.npz", loss="cross-entropy", batch_size=3)
    assert r.loss == pytest.approx(-np.mean(np.log(p[np.arange(10), labels])), rel=1e-6)
    assert r.accuracy == pytest.approx(np.mean(p.argmax(1) == labels))


def test_predict_writes_the_models_outputs(trained, tmp_path, run):
    out = tmp_path / "pred.npz"
    r = run("predict", trained["model"], "--data", VAL, "-o", out, "--batch-size", "7")
    assert r.stdout == f"wrote {out} (logits [64, 2])\n"
    (expected,) = session(onnx.load(str(trained["model"]))).run(
        None, {"image": np.load(VAL)["image"]}
    )
    np.testing.assert_allclose(np.load(out)["logits"], expected, rtol=1e-6, atol=1e-6)


def test_predict_never_writes_over_its_inputs(trained, tmp_path):
    data = tmp_path / "val.npz"
    shutil.copy(VAL, data)
    with pytest.raises(ModelFileError) as e:
        predict(trained["model"], data, data)
    assert "is the same file as the data" in str(e.value)
    assert data.read_bytes() == VAL.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {},
            ArtifactsError,
            "a model has no loss of its own: give loss (one of mse, cross-entropy, bce, l1)",
        ),
        (
            {"loss": "cross-entropy", "output": "nope"},
            ArtifactsError,
            "output 'nope' is not an output of the model; its outputs are: logits",
        ),
        ({"loss": "mse"}, TrainingDataError, "has no array 'target'; it holds image, labels"),
    ],
)
def test_a_model_is_scored_only_as_asked(trained, kwargs, error, message):
    with pytest.raises(error) as e:
        evaluate(trained["model"], VAL, **kwargs)
    assert message in str(e.value)


def test_predict_never_writes_over_the_models_external_data(trained, tmp_path):
    from tests.support.factories import save, simple_cnn

    model = save(simple_cnn(), tmp_path / "m.onnx", external=True)
    data_file = tmp_path / "m.onnx.weights"
    kept = data_file.read_bytes()
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ModelFileError) as e:
        predict(model, tmp_path / "x.npz", data_file)
    assert "external data file" in str(e.value)
    assert data_file.read_bytes() == kept

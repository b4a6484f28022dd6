"""Models exported in training mode (ONNX Runtime's on-device training docs recommend
training=TrainingMode.TRAINING): BatchNormalization with training_mode=1 and running-statistics
outputs, Dropout with a true training flag (issue 16, item 3). They used to fail to load after
the build ("[ShapeInferenceError] This number of op outputs should be 1"); now they train in
inference form, with the running statistics kept, and the exported model runs that form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxfix import ArtifactsError, export_model, make_artifacts, train
from tests.support.runtime import session


def _model(path: Path, *, stats_output: bool = False, dropout: bool = True) -> Path:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "g"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.2, 4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
        numpy_helper.from_array(rng.normal(size=(4, 2)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
        numpy_helper.from_array(np.array(True), "training"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c", "g", "b", "mean", "var"],
            ["bn", "rm", "rv"],
            name="bn",
            training_mode=1,
            momentum=0.9,
        ),  # fmt: skip
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
    ]
    last = "f"
    if dropout:
        nodes.append(helper.make_node("Dropout", ["f", "ratio", "training"], ["d"], name="drop"))
        last = "d"
    nodes.append(helper.make_node("MatMul", [last, "fc"], ["y"], name="head"))
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])]
    if stats_output:
        outputs.append(helper.make_tensor_value_info("rm", onnx.TensorProto.FLOAT, [4]))
    graph = helper.make_graph(
        nodes, "tm", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        outputs, inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _numpy_inference(x: np.ndarray, model_path: Path) -> np.ndarray:
    """The model in inference form, by hand: BatchNorm with the running statistics, no dropout."""
    t = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(model_path)).graph.initializer}
    import tests.support.convgrad as cg

    c = cg.conv(x.astype(np.float64), t["w"].astype(np.float64), None, group=1, strides=[1, 1],
                pads=[1, 1, 1, 1], dilations=[1, 1])  # fmt: skip
    shape = (1, 4, 1, 1)
    bn = (c - t["mean"].reshape(shape)) / np.sqrt(t["var"].reshape(shape) + 1e-5)
    bn = bn * t["g"].reshape(shape) + t["b"].reshape(shape)
    pooled = np.maximum(bn, 0).mean(axis=(2, 3))
    return pooled @ t["fc"]


def test_a_training_mode_export_trains_in_inference_form(tmp_path, run):
    model = _model(tmp_path / "tm.onnx")
    r = run("make-artifacts", model, "-o", tmp_path / "art")
    assert r.exit_code == 0, r.output
    assert (
        "note: 2 BatchNormalization/Dropout nodes were exported in training mode ('bn', 'drop'): "
        "made their inference form" in r.stderr
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, target=rng.normal(size=(8, 2)).astype(np.float32))
    before = tmp_path / "before.onnx"
    export_model(tmp_path / "art", before)
    (y,) = session(onnx.load(str(before))).run(None, {"x": x})
    np.testing.assert_allclose(y, _numpy_inference(x, model), rtol=1e-4, atol=1e-5)
    train(tmp_path / "art", tmp_path / "d.npz", epochs=2, batch_size=4)
    export_model(tmp_path / "art", tmp_path / "after.onnx")
    graph = onnx.load(str(tmp_path / "after.onnx")).graph
    (bn,) = [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert list(bn.output) == ["bn"] and not [a for a in bn.attribute if a.name == "training_mode"]
    (drop,) = [n for n in graph.node if n.op_type == "Dropout"]
    assert list(drop.input) == ["f", "ratio"]
    stats = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    for name in ("mean", "var"):  # never trained, never updated from batches
        assert np.array_equal(stats[name], original[name])


def test_running_statistics_read_elsewhere_are_refused(tmp_path):
    model = _model(tmp_path / "tm.onnx", stats_output=True, dropout=False)
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(model, tmp_path / "art", self_test=False)
    assert str(e.value) == (
        "BatchNormalization 'bn' is in training form and its output 'rm' (updated running "
        "statistics) is read; export the model for inference (model.eval()), or without that output"
    )
    assert not (tmp_path / "art").exists()

"""inspect: every conv, where its weight comes from, sharing, provenance; the kernels listing."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from onnxfix import inspect_model, set_kernel
from tests.support.factories import (
    if_subgraph_model,
    node_weight_model,
    quantized_model,
    save,
    shared_weight_model,
    simple_cnn,
)


def test_table_and_json(tmp_path, run):
    path = save(simple_cnn(), tmp_path / "cnn.onnx")
    result = run("inspect", path)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"{path}: IR 8, opset 17, onnxfix-tests",
        "inputs: x float32 [1, 3, 16, 16]",
        "outputs: y float32 [1, 10]",
        "parameters: 898 in 6 initializers (0.00 MB)",
        "#  node   op    weight        shape    group  source       shared with  fixed",
        "0  conv1  Conv  conv1.weight  8x3x3x3  1      initializer  -            -",
        "1  conv2  Conv  conv2.weight  8x8x3x3  1      initializer  -            -",
    ]
    data = json.loads(run("inspect", path, "--json").stdout)
    assert data["opset"] == 17 and data["ir_version"] == 8
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 16, 16]}]
    assert data["parameters"] == {"count": 898, "bytes": 3592, "initializers": 6}
    assert data["convs"][1] == {
        "index": 1,
        "node": "conv2",
        "op": "Conv",
        "weight": "conv2.weight",
        "shape": [8, 8, 3, 3],
        "dtype": "float32",
        "group": 1,
        "source": "initializer",
        "source_tensor": "conv2.weight",
        "graph": "main",
        "bias": "conv2.bias",
        "quantized": False,
        "shared_with": [],
        "fixed": False,
    }


def test_fixed_column_after_set_kernel(tmp_path):
    path = save(simple_cnn(), tmp_path / "cnn.onnx")
    set_kernel(path, tmp_path / "o.onnx", layers=["conv2"], kernel="box")
    report = inspect_model(tmp_path / "o.onnx")
    assert [c.fixed for c in report.convs] == [False, True]
    assert set(report.fixed) == {"conv2.weight"}


@pytest.mark.parametrize(
    "kind, label",
    [
        ("Constant", "Constant"),
        ("ConstantOfShape", "ConstantOfShape"),
        ("Identity", "Identity of 'stored.weight'"),
        ("Cast", "Cast of 'stored.weight'"),
    ],
)
def test_weight_sources(tmp_path, kind, label):
    report = inspect_model(save(node_weight_model(kind), tmp_path / "m.onnx"))
    assert report.convs[0].source.label == label
    assert report.convs[0].shape == (8, 3, 3, 3)


def test_quantized_and_shared(tmp_path):
    q = inspect_model(save(quantized_model(), tmp_path / "q.onnx"))
    assert [(c.node, c.op, c.source.label, c.quantized) for c in q.convs] == [
        ("qdq_conv", "Conv", "DequantizeLinear", True),
        ("int_conv", "ConvInteger", "initializer", True),
    ]
    s = inspect_model(save(shared_weight_model(), tmp_path / "s.onnx"))
    assert [c.shared_with for c in s.convs] == [("convB",), ("convA",)]


def test_convs_inside_if_subgraphs_can_be_fixed(tmp_path, run):
    path = save(if_subgraph_model(), tmp_path / "if.onnx")
    report = inspect_model(path)
    assert [(c.node, c.graph, c.source.kind) for c in report.convs] == [
        ("conv_else", "main/choose.else_branch", "initializer"),
        ("conv_then", "main/choose.then_branch", "initializer"),
    ]
    out = tmp_path / "o.onnx"
    set_kernel(path, out, layers=["conv_then"], kernel="identity")
    x = np.random.default_rng(0).normal(size=(1, 1, 6, 6)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y[0, 0], x[0, 0])  # cond is true: the identity kernel runs


def test_kernels_listing(run):
    result = run("kernels")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert names == [
        "sobel-x",
        "sobel-y",
        "scharr-x",
        "scharr-y",
        "prewitt-x",
        "prewitt-y",
        "laplacian",
        "gaussian",
        "log",
        "gabor",
        "box",
        "identity",
        "sharpen",
    ]
    assert "parameters: sigma=2.0, theta=0.0, lambd=4.0, gamma=0.5" in result.stdout


def test_inspect_does_not_read_weights(tmp_path, run):
    """A model whose external data file is gone still inspects; set-kernel says what is wrong."""
    path = save(simple_cnn(), tmp_path / "ext.onnx", external=True)
    (tmp_path / "ext.onnx.weights").rename(tmp_path / "elsewhere")
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "conv2.weight  8x8x3x3" in result.stdout
    result = run(
        "set-kernel", path, "--layer", "conv1", "--kernel", "box", "-o", tmp_path / "o.onnx"
    )
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: '{path}' keeps tensor 'conv1.weight' in 'ext.onnx.weights', which is not in "
        f"'{tmp_path}'; copy the data file next to the model\n"
    )

"""What cannot train is frozen with a precise reason, refused, or fixed up; and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxfix import make_artifacts, set_kernel
from onnxfix.errors import ArtifactsError
from tests.support.corpus import onnx_backend_models
from tests.support.factories import blocked_cnn, quantized_model, save

REASON = "CumSum node 'cumsum': ONNX Runtime 1.19.2 has no gradient for CumSum"


def test_blocked_parameters_are_frozen_and_named(tmp_path, run):
    path = save(blocked_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "art"
    result = run("make-artifacts", path, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"frozen automatically: 2 tensors upstream of {REASON}" in result.stdout
    m = json.loads((out / "onnxfix.json").read_text())
    assert m["blocked"] == {"conv1.weight": REASON, "conv1.bias": REASON}
    assert m["trainable"] == ["conv2.weight", "conv2.bias", "head.weight", "head.bias"]
    assert m["frozen"] == ["conv1.weight", "conv1.bias"]


def test_strict_refuses_instead(tmp_path, run):
    path = save(blocked_cnn(), tmp_path / "m.onnx")
    result = run("make-artifacts", path, "-o", tmp_path / "art", "--strict")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: --strict: 2 parameters cannot train on the CPU (conv1.bias, conv1.weight), blocked by {REASON}\n"
    )
    assert not (tmp_path / "art").exists()


def test_inspect_trainable_reports_without_building(tmp_path, run):
    path = save(blocked_cnn(), tmp_path / "m.onnx")
    set_kernel(path, tmp_path / "f.onnx", layers=["conv2"], kernel="sobel-x")
    result = run("inspect", tmp_path / "f.onnx", "--trainable")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "loss input: y",
        "trainable (3): conv2.bias, head.weight, head.bias",
        "fixed kernels, frozen (1): conv2.weight",
        "blocked, frozen automatically (2): conv1.bias, conv1.weight",
        f"  by {REASON}",
    ]
    data = json.loads(run("inspect", tmp_path / "f.onnx", "--trainable", "--json").stdout)
    assert data["blocked"] == {"conv1.weight": REASON, "conv1.bias": REASON}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "m.onnx"]  # built nothing


def test_quantized_model_refused_with_a_way_forward(tmp_path):
    path = save(quantized_model(), tmp_path / "q.onnx")
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(path, tmp_path / "art")
    assert str(e.value) == (
        "the model has quantized convs ('qdq_conv' (QDQ weight), 'int_conv' (ConvInteger)); ONNX "
        "Runtime cannot train integer weights. Fine-tune the float model, then quantize it"
    )
    assert not (tmp_path / "art").exists()


def test_old_opset_ir3_constantofshape_model_trains(tmp_path):
    """light_squeezenet: IR 3, opset 9, ConstantOfShape weights, Softmax output."""
    path = next(p for p in onnx_backend_models(("light",)) if p.stem == "light_squeezenet")
    set_kernel(path, tmp_path / "f.onnx", layers=["#0"], kernel="box")
    result = make_artifacts(tmp_path / "f.onnx", tmp_path / "art", loss="cross-entropy")
    m = result.manifest
    assert m.changes[0].startswith("removed ")
    assert "converted opset 9 to 13 with onnx's version converter" in m.changes
    assert any(c.startswith("lifted ") for c in m.changes)
    assert m.notes[-1].startswith(
        "output 'softmaxout_1' comes from Softmax; cross-entropy is computed on its input"
    )
    assert "conv1_w_0" in m.frozen and len(m.trainable) > 40
    assert result.selftest.frozen_checked == 1
    assert np.isfinite(result.selftest.loss)


def test_crash_hint_names_the_likely_cause(tmp_path):
    """What crashed ONNX Runtime's training on real models: dynamic input dims (PaddleOCR),
    recurrent nodes. A crash or failed step in make-artifacts ends with this hint."""
    from onnxfix.cli import FLAGS
    from onnxfix.commands.make_artifacts import _crash_hint
    from onnxfix.errors import OnnxfixError
    from tests.support.corpus import PADDLE_CLS_MODEL, torch_models

    hint = OnnxfixError(_crash_hint(PADDLE_CLS_MODEL, None))
    assert hint.render(FLAGS) == (
        "Likely cause: the dynamic dims of input 'x', which ONNX Runtime's training kernels "
        "mis-size; give its real shape with --input-shape x=D0,D1,..."
    )
    assert str(hint).endswith("give its real shape with input_shapes x=D0,D1,...")
    assert _crash_hint(PADDLE_CLS_MODEL, {"x": [1, 3, 48, 192]}) is None
    lstm = next(m for m in torch_models() if m.id == "conv_lstm.torchscript")
    assert _crash_hint(lstm.path, None) == (
        "Likely op: '/lstm/LSTM' (ONNX Runtime's recurrent gradients crash on some forms)"
    )
    assert _crash_hint(save(blocked_cnn(), tmp_path / "m.onnx"), None) is None


def test_convs_inside_an_if_are_frozen_with_the_reason(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from tests.support.factories import if_subgraph_model

    model = if_subgraph_model()
    graph = model.graph
    graph.node[0].output[0] = "y_if"
    graph.initializer.append(numpy_helper.from_array(np.ones((1, 2, 1, 1), np.float32), "scale"))
    graph.node.append(helper.make_node("Mul", ["y_if", "scale"], ["y"], name="head"))
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6]))
    path = save(model, tmp_path / "if.onnx")
    set_kernel(path, tmp_path / "f.onnx", layers=["conv_then"], kernel="identity")
    m = make_artifacts(tmp_path / "f.onnx", tmp_path / "art").manifest
    assert m.trainable == ("scale",)
    assert m.blocked == {"w_else": "If node 'choose': ONNX Runtime 1.19.2 has no gradient for If"}
    assert m.frozen == ("w_then", "w_else")

"""A model that saturates on random batches is not broken: the self-test warns and says what to
check, instead of refusing (issue 16, item 2), and --self-test-data steps on the user's data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix import make_artifacts


def _saturating(path: Path) -> Path:
    """x [N,1,4,4] -> Conv (bias -1e6) -> Relu -> GAP -> MatMul: zero on noise, alive on x=1e7."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(
            np.abs(rng.normal(size=(2, 1, 3, 3))).astype(np.float32) + 0.1, "w"
        ),
        numpy_helper.from_array(np.full(2, -1e6, np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(2, 3)).astype(np.float32), "m"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "m"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_saturation_on_noise_is_a_warning_and_real_data_clears_it(tmp_path, run):
    model = _saturating(tmp_path / "m.onnx")
    r = run("make-artifacts", model, "-o", tmp_path / "art")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "art" / "checkpoint").is_file()
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning: self-test:")]
    assert warning == [
        "warning: self-test: every gradient was exactly 0 on random batches of width 1, 3, 10. "
        "The artifacts are sound (the step ran, finite, the frozen tensors bit-identical), but "
        "the model's output saturates there (a softmax or sigmoid at its end, a ReLU cut off) or "
        "the loss does not depend on what trains: check that the loss falls on real data "
        "(make-artifacts --self-test-data DATA.npz runs this check on it)"
    ]
    x = np.full((4, 1, 4, 4), 1e7, np.float32)
    np.savez(tmp_path / "real.npz", x=x, target=np.zeros((4, 3), np.float32))
    result = make_artifacts(model, tmp_path / "art2", self_test_data=tmp_path / "real.npz")
    assert result.selftest.warning is None, result.selftest.warning
    assert set(result.selftest.zero_gradient) == set()

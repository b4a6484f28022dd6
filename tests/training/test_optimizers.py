"""Optimizer settings baked into the optimizer model, and PyTorch's AdamW.

The reference is a NumPy copy of ``torch.optim.AdamW``'s update rule (torch/optim/adamw.py,
single-tensor path): p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Gradients come from the NumPy conv of
tests/support/convgrad.py, so nothing here runs torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxfix import ArtifactsError, make_artifacts
from onnxfix.training.ort import training_api
from tests.support import convgrad

ATTRS = {"group": 1, "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
STEPS, LR = 10, 0.05


def _model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, (3,)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **ATTRS)
    graph = helper.make_graph(
        [node],
        "opt",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 5, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    return tmp_path / "m.onnx"


def _batches():
    rng = np.random.default_rng(1)
    return [
        (
            rng.normal(size=(4, 2, 5, 5)).astype(np.float32),
            rng.normal(size=(4, 3, 5, 5)).astype(np.float32),
        )
        for _ in range(STEPS)
    ]


def _ort(artifacts: Path, batches) -> dict[str, np.ndarray]:
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(artifacts / "checkpoint"))
    module = api.Module(
        str(artifacts / "training_model.onnx"), state, str(artifacts / "eval_model.onnx")
    )
    optimizer = api.Optimizer(str(artifacts / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(LR)
    module.train()
    for x, t in batches:
        module(x, t)
        optimizer.step()
        module.lazy_reset_grad()
    return {name: np.array(p.data) for name, p in state.parameters}


def _torch_adamw(w, b, batches, *, betas, eps, weight_decay):
    """torch.optim.AdamW's rule in float64, on the MSE loss of the conv."""
    params = {"w": w.astype(np.float64), "b": b.astype(np.float64)}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1, b2 = betas
    for t, (x, target) in enumerate(batches, start=1):
        y = convgrad.conv(x.astype(np.float64), params["w"], params["b"], **ATTRS)
        dy = 2 * (y - target) / y.size
        grads = {
            "w": convgrad.conv_weight_grad(x.astype(np.float64), dy, params["w"].shape, **ATTRS),
            "b": dy.sum(axis=(0, 2, 3)),
        }
        for k in params:
            params[k] = params[k] * (1 - LR * weight_decay)
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
            denom = np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps
            params[k] = params[k] - LR / (1 - b1**t) * m[k] / denom
    return params


# Settings far from the defaults, so the two forms differ clearly: with eps 1e-8 and decay
# 0.01 they agree to ~1e-6 and a test could not tell them apart.
SETTINGS = {"betas": (0.8, 0.95), "eps": 0.05, "weight_decay": 0.5}


@pytest.mark.slow  # the fast run stays under a minute
def test_torch_adamw_follows_torchs_update_rule_and_adamw_does_not(tmp_path):
    model = _model(tmp_path)
    start = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    batches = _batches()
    reference = _torch_adamw(start["w"], start["b"], batches, **SETTINGS)
    results = {}
    for optimizer in ("torch-adamw", "adamw"):
        art = tmp_path / optimizer
        make_artifacts(model, art, optimizer=optimizer, self_test=False, **SETTINGS)
        results[optimizer] = _ort(art, batches)
        manifest = json.loads((art / "onnxfix.json").read_text())
        assert manifest["optimizer_settings"] == {
            "optimizer": optimizer,
            "form": "torch" if optimizer == "torch-adamw" else "hf",
            "betas": [0.8, 0.95],
            "eps": 0.05,
            "weight_decay": 0.5,
        }
    for name in ("w", "b"):
        moved = np.abs(reference[name] - start[name]).max()
        assert moved > 0.05  # the steps did something
        gap = np.abs(results["torch-adamw"][name] - reference[name]).max()
        assert gap < 1e-5 * max(1.0, np.abs(reference[name]).max()), (name, gap)
        other = np.abs(results["adamw"][name] - reference[name]).max()
        assert other > 1e-3, (name, other)  # ORT's own form is another rule


def test_torch_adamw_defaults_are_torchs(tmp_path):
    model = _model(tmp_path)
    make_artifacts(model, tmp_path / "art", optimizer="torch-adamw", self_test=False)
    (node,) = [
        n
        for n in onnx.load(str(tmp_path / "art" / "optimizer_model.onnx")).graph.node
        if n.op_type == "AdamWOptimizer"
    ]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["adam_mode"] == 0 and attrs["correct_bias"] == 1
    assert (attrs["alpha"], attrs["beta"]) == pytest.approx((0.9, 0.999))
    assert attrs["epsilon"] == pytest.approx(1e-8) and attrs["weight_decay"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"optimizer": "sgd", "weight_decay": 0.1},
            "weight_decay is an AdamW setting; SGD takes only the learning rate",
        ),
        ({"betas": (0.9, 1.0)}, "betas [0.9, 1.0] must be two numbers from 0 to below 1"),
        ({"eps": 0.0}, "eps 0.0 must be a number above 0"),
        ({"weight_decay": float("nan")}, "weight_decay nan must be a number, 0 or more"),
        (
            {"optimizer": "sgd", "momentum": 0.9},
            "momentum: ONNX Runtime 1.19.2's on-device training has no SGD with momentum",
        ),
    ],
)
def test_settings_that_cannot_be_built_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(_model(tmp_path), tmp_path / "art", self_test=False, **kwargs)
    assert str(e.value).startswith(message)
    assert not (tmp_path / "art").exists()

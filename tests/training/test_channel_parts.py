"""Some channels of a conv fixed, the rest trained: through the real training API.

Each case: set-kernel fixes some output channels of one conv, make-artifacts builds SGD
artifacts, ONNX Runtime's training API takes a few steps, export writes the model back. The
fixed channels must be bit-identical; every other channel must equal an independent NumPy
(float64) computation of the same SGD steps in which the fixed channels get no gradient and
every other channel its full gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxfix
from onnxfix.training.ort import training_api
from tests.support import convgrad
from tests.support.runtime import session


@dataclass(frozen=True)
class Case:
    op: str
    weight: tuple[int, ...]
    group: int
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    size: tuple[int, ...]  # the input's spatial size

    @property
    def rank(self) -> int:
        return len(self.weight) - 2

    @property
    def cin(self) -> int:
        return self.weight[1] * self.group if self.op == "Conv" else self.weight[0]

    @property
    def cout(self) -> int:
        return self.weight[0] if self.op == "Conv" else self.weight[1] * self.group

    def attrs(self) -> dict:
        return {
            "group": self.group,
            "strides": list(self.strides),
            "pads": list(self.pads),
            "dilations": list(self.dilations),
        }

    def forward(self, x, w, b):
        f = convgrad.conv if self.op == "Conv" else convgrad.conv_transpose
        return f(x, w, b, **self.attrs())

    def weight_grad(self, x, dy):
        f = convgrad.conv_weight_grad if self.op == "Conv" else convgrad.conv_transpose_weight_grad
        return f(x, dy, self.weight, **self.attrs())


CASES = {
    "conv1d": Case("Conv", (6, 2, 3), 1, (1,), (2, 2), (2,), (11,)),
    "conv2d": Case("Conv", (6, 3, 3, 3), 1, (2, 2), (1, 1, 1, 1), (1, 1), (7, 8)),
    "conv3d": Case("Conv", (4, 2, 3, 3, 3), 1, (1, 1, 1), (1,) * 6, (1, 1, 1), (4, 5, 4)),
    "grouped": Case("Conv", (6, 2, 3, 3), 2, (1, 1), (1, 1, 1, 1), (1, 1), (6, 6)),
    "depthwise": Case("Conv", (8, 1, 3, 3), 4, (1, 1), (0, 1, 0, 1), (1, 1), (6, 7)),
    "conv_transpose": Case("ConvTranspose", (3, 4, 3, 3), 1, (2, 2), (1, 1, 1, 1), (1, 1), (4, 5)),
    "conv_transpose_grouped": Case(
        "ConvTranspose", (4, 3, 2, 3), 2, (2, 1), (0, 1, 0, 1), (1, 2), (3, 4)
    ),
}
# --channels forms: the first channels (a Concat joins the parts), the last ones (a Concat in
# the other order), and a scattered set (a Gather puts the rows in place).
FIRST, LAST, SCATTERED = "0:2", "-2:", "1,3"
BATCH, STEPS, LR = 3, 3, 0.05


def _model(case: Case, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, case.weight).astype(np.float32)
    b = rng.normal(0, 0.1, (case.cout,)).astype(np.float32)
    x = np.zeros((1, case.cin, *case.size))
    out = case.forward(x, w.astype(np.float64), None).shape[2:]
    node = helper.make_node(case.op, ["x", "w", "b"], ["y"], name="conv", **case.attrs())
    graph = helper.make_graph(
        [node],
        "channels",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", case.cin, *case.size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", case.cout, *out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _batches(case: Case, seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        x = rng.normal(0, 1, (BATCH, case.cin, *case.size)).astype(np.float32)
        out = case.forward(x.astype(np.float64), np.zeros(case.weight), None).shape
        yield x, rng.normal(0, 1, out).astype(np.float32)


def _reference(case: Case, w, b, batches, fixed: list[int], bias_fixed: bool):
    """SGD on the MSE loss in float64: fixed channels get no gradient."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    trained = [c for c in range(case.cout) if c not in fixed]
    mask = convgrad.output_channel_mask(case.weight, trained, op=case.op, group=case.group)
    bias_mask = np.ones(case.cout)
    if bias_fixed:
        bias_mask[fixed] = 0
    losses = []
    for x, t in batches:
        x = x.astype(np.float64)
        y = case.forward(x, w, b)
        losses.append(float(np.mean((y - t) ** 2)))
        dy = 2 * (y - t) / y.size
        w = w - LR * case.weight_grad(x, dy) * mask
        b = b - LR * dy.sum(axis=(0, *range(2, 2 + case.rank))) * bias_mask
    return w, b, losses


def _train_with_ort(artifacts: Path, batches, checkpoint: Path) -> list[float]:
    api = training_api()  # onnxruntime.training's __init__ needs torch; its api does not
    state = api.CheckpointState.load_checkpoint(str(artifacts / "checkpoint"))
    module = api.Module(
        str(artifacts / "training_model.onnx"), state, str(artifacts / "eval_model.onnx")
    )
    optimizer = api.Optimizer(str(artifacts / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(LR)
    module.train()
    losses = []
    for x, t in batches:
        losses.append(float(module(x, t)))
        optimizer.step()
        module.lazy_reset_grad()
    api.CheckpointState.save_checkpoint(state, str(checkpoint))
    return losses


def _run(tmp_path: Path, case: Case, channels: str, bias: str):
    source = tmp_path / "model.onnx"
    onnx.save(_model(case), str(source))
    spatial = np.random.default_rng(2).normal(0, 1, case.weight[2:])
    fixed_model = tmp_path / "fixed.onnx"
    onnxfix.set_kernel(
        source, fixed_model, layers="conv", kernel=spatial, channels=channels, bias=bias
    )
    artifacts = tmp_path / "artifacts"
    onnxfix.make_artifacts(fixed_model, artifacts, optimizer="sgd")
    batches = list(_batches(case))
    checkpoint = tmp_path / "trained_checkpoint"
    losses = _train_with_ort(artifacts, batches, checkpoint)
    onnxfix.export_model(artifacts, tmp_path / "trained.onnx", checkpoint=checkpoint)
    return _initializers(fixed_model), _initializers(tmp_path / "trained.onnx"), batches, losses


def _check(tmp_path: Path, case: Case, channels: str, bias: str) -> None:
    start, trained, batches, losses = _run(tmp_path, case, channels, bias)
    record = onnxfix.verify(tmp_path / "trained.onnx")
    assert record.ok
    fixed = list(record.checks[0].fixed_channels)
    w_ref, b_ref, ref_losses = _reference(
        case, start["w"], start["b"], batches, fixed, bias_fixed=bias != "keep"
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)

    fixed_mask = convgrad.output_channel_mask(case.weight, fixed, op=case.op, group=case.group)
    is_fixed = fixed_mask.astype(bool)
    # The fixed channels: the very bytes set-kernel wrote.
    assert np.array_equal(trained["w"][is_fixed], start["w"][is_fixed])
    # Every other channel moved, by exactly its full gradient.
    assert np.all(trained["w"][~is_fixed] != start["w"][~is_fixed])
    np.testing.assert_allclose(trained["w"], w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trained["b"], b_ref, rtol=1e-5, atol=1e-6)
    if bias != "keep":
        assert np.array_equal(trained["b"][fixed], start["b"][fixed])
        assert np.all(start["b"][fixed] == 0)
    others = [c for c in range(case.cout) if c not in fixed]
    assert np.all(trained["b"][others] != start["b"][others])


FAST = [("conv_transpose_grouped", SCATTERED, "zero")]  # the most involved join; CI runs all
SLOW = [
    (name, channels, bias)
    for name in CASES
    for channels, bias in ((FIRST, "keep"), (LAST, "zero"), (SCATTERED, "zero"))
    if (name, channels, bias) not in FAST
]


@pytest.mark.parametrize("name,channels,bias", FAST)
def test_fixed_channels_stay_and_the_others_train_as_numpy_says(tmp_path, name, channels, bias):
    _check(tmp_path, CASES[name], channels, bias)


@pytest.mark.slow
@pytest.mark.parametrize("name,channels,bias", SLOW)
def test_every_conv_kind_and_channel_set(tmp_path, name, channels, bias):
    _check(tmp_path, CASES[name], channels, bias)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_numpy_reference_computes_what_onnx_runtime_does(name):
    """The reference's forward pass against ONNX Runtime's, and its weight gradient against
    central differences: what the training tests compare with is itself right."""
    case = CASES[name]
    model = _model(case)
    w, b = (numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer)
    x, t = next(_batches(case))
    (y,) = session(model).run(None, {"x": x})
    np.testing.assert_allclose(case.forward(x.astype(np.float64), w, b), y, rtol=1e-5, atol=1e-5)

    def loss(weights):
        return np.mean((case.forward(x.astype(np.float64), weights, b) - t) ** 2)

    y64 = case.forward(x.astype(np.float64), w, b)
    grad = case.weight_grad(x.astype(np.float64), 2 * (y64 - t) / y64.size)
    rng = np.random.default_rng(3)
    for _ in range(5):
        index = tuple(int(rng.integers(0, d)) for d in case.weight)
        step = np.zeros_like(w)
        step[index] = 1e-6
        numeric = (loss(w + step) - loss(w - step)) / 2e-6
        assert numeric == pytest.approx(grad[index], rel=1e-5, abs=1e-9)

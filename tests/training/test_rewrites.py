"""rewrite_for_training: every rewrite computes the original op's function (bit-identical, or
within the tolerance its description states) and trains through ONNX Runtime 1.19.2 on CPU
with the gradient of the ORIGINAL op (finite differences of the original model).

Training runs in-process, except for LSTM/GRU: ORT can crash the process there, so those
steps run in a child interpreter (``_child_main``)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix.training.freeze import freeze_plan
from onnxfix.training.normalize import prepare_for_training
from onnxfix.training.ort import ORT_MAX_IR_VERSION, onnxblock, training_api
from onnxfix.training.rewrites import REWRITTEN_OPS, ZERO_GATE_PREFIX, Rewrite, rewrite_for_training
from tests.support.paths import ROOT
from tests.support.runtime import session

ort.set_default_logger_severity(3)

# The special inputs of the doc's probe: zeros of both signs, tiny, kinks, large.
_SPECIAL = np.array(
    [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1, -1, 2.5, -2.5, 3, -3, 6, -6]
    + [10, -10, 50, -50, 88, -88, 100, -100, 1e4, -1e4]
    + [np.nextafter(np.float32(v), np.float32(d)) for v in (3, -3) for d in (0, 10)],
    np.float32,
)


# --------------------------------------------------------------------------- tiny models
class Net:
    """A tiny graph ``X -> [Mul(X, pre)] -> ops -> output``, parameters seeded by name.

    ``train=True`` puts a trainable elementwise scale ``pre`` in front, so every rewrite is
    tested with a gradient flowing through it to something upstream."""

    def __init__(self, x_shape, opset: int = 17, train: bool = False):
        self.x_shape, self.opset = tuple(x_shape), opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.trainable: list[str] = []
        self._n = 0
        self.x = "X"
        if train:
            pre = self.param("pre", [d if isinstance(d, int) else 1 for d in x_shape[1:]])
            self.x = self.op("Mul", ["X", pre])

    def param(self, name, shape, *, low=0.5, high=1.5, normal=None, train=True) -> str:
        rng = np.random.default_rng(sum(map(ord, name)))
        value = rng.normal(0, normal, shape) if normal else rng.uniform(low, high, shape)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        if train:
            self.trainable.append(name)
        return name

    def const(self, value, dtype=np.float32) -> str:
        self._n += 1
        name = f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs, outs: int = 1, **attrs):
        self._n += 1
        names = [f"t{self._n}_{k}" for k in range(outs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=f"n{self._n}_{op_type}", **attrs)
        )
        return names[0] if outs == 1 else names

    def model(self, out: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes + [helper.make_node("Identity", [out], ["out"], name="n_out")],
            "net",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(self.x_shape))],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = ORT_MAX_IR_VERSION
        inferred = onnx.shape_inference.infer_shapes(model).graph.output[0]
        if inferred.type.tensor_type.HasField("shape"):
            model.graph.output[0].CopyFrom(inferred)
        onnx.checker.check_model(model)
        return model


def inputs_for(shape, seed: int = 0) -> list[np.ndarray]:
    """Random normal inputs at four scales, then the special values tiled over the shape."""
    rng = np.random.default_rng(seed)
    xs = [(rng.standard_normal(shape) * s).astype(np.float32) for s in (0.5, 2, 4, 10)]
    size = int(np.prod(shape))
    xs.append(np.resize(rng.permutation(np.resize(_SPECIAL, size)), shape).astype(np.float32))
    return xs


def rewritten(model: onnx.ModelProto, frozen=frozenset()) -> tuple[onnx.ModelProto, list]:
    out = copy.deepcopy(model)
    done = rewrite_for_training(out, frozen)
    onnx.checker.check_model(out)
    return out, done


# --------------------------------------------------------------------------- training
def _artifacts_module():
    onnxblock()  # registers onnxruntime.training without its torch-importing __init__
    from onnxruntime.training import artifacts

    return artifacts


def train_step(model, trainable, frozen, feeds):
    """One training step: (loss, {param: gradient}); the artifacts lowered to IR 10."""
    artifacts, api = _artifacts_module(), training_api()
    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as folder:
        artifacts.generate_artifacts(
            model,
            requires_grad=list(trainable),
            frozen_params=list(frozen),
            loss=artifacts.LossType.MSELoss,
            optimizer=artifacts.OptimType.AdamW,
            artifact_directory=folder,
        )
        for name in os.listdir(folder):
            if name.endswith(".onnx"):
                path = os.path.join(folder, name)
                m = onnx.load(path)
                m.ir_version = ORT_MAX_IR_VERSION
                onnx.save(m, path)
        state = api.CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
        module = api.Module(
            os.path.join(folder, "training_model.onnx"),
            state,
            os.path.join(folder, "eval_model.onnx"),
        )
        optimizer = api.Optimizer(os.path.join(folder, "optimizer_model.onnx"), module)
        module.train()
        loss = float(module(*feeds))
        grads = {p: np.array(state.parameters[p].grad) for p in trainable}
        optimizer.step()
        after = {p: np.array(state.parameters[p].data) for p in trainable}
    return loss, grads, after


def _params_as_inputs(model: onnx.ModelProto, names) -> tuple[onnx.ModelProto, dict]:
    m = copy.deepcopy(model)
    keep, values = [], {}
    for t in m.graph.initializer:
        if t.name in names:
            values[t.name] = numpy_helper.to_array(t)
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        else:
            keep.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m, values


def training_report(original, trainable, x, *, frozen=frozenset(), seed=1, rewrite=True) -> dict:
    """Rewrite ``original``, train one step, and compare with the ORIGINAL model: the loss
    of the training step against its inference loss, and the gradient (one directional
    derivative along the gradient) against central finite differences."""
    model, done = rewritten(original, frozen) if rewrite else (original, [])
    added = [p for r in done for p in r.parameters]
    outputs = session(original).run(None, {"X": x})
    target = np.random.default_rng(seed).standard_normal(outputs[0].shape).astype(np.float32)
    loss, grads, after = train_step(model, list(trainable) + added, sorted(frozen), (x, target))

    reference, values = _params_as_inputs(original, trainable)
    ref = session(reference)

    def loss_at(vals) -> float:
        y = ref.run(None, {"X": x, **vals})[0].astype(np.float64)
        return float(np.mean((y - target) ** 2))

    g = {p: grads[p].astype(np.float64) for p in trainable}
    norm = float(np.sqrt(sum(np.sum(v**2) for v in g.values())))
    fd_error = None
    if norm > 0:
        errors = []
        for eps in (1e-2, 3e-3, 1e-3):
            plus = {p: (values[p] + eps * g[p] / norm).astype(np.float32) for p in trainable}
            minus = {p: (values[p] - eps * g[p] / norm).astype(np.float32) for p in trainable}
            fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
            errors.append(abs(fd - norm) / norm)
        fd_error = min(errors)
    return {
        "rewrites": [r.op for r in done],
        "added": added,
        "loss": loss,
        "inference_loss": loss_at(values),
        "grad_norms": {p: float(np.linalg.norm(v)) for p, v in grads.items()},
        "grads_finite": all(bool(np.isfinite(v).all()) for v in grads.values()),
        "fd_error": fd_error,
        "added_after_step": {p: after[p].tolist() for p in added},
    }


def assert_trains(report: dict, zero_grad=()) -> None:
    assert np.isfinite(report["loss"])
    assert report["grads_finite"]
    for name, norm in report["grad_norms"].items():
        if name in zero_grad:
            assert norm == 0.0, name
        else:
            assert norm > 0.0, name
    # The training graph computes the original model's function...
    assert report["loss"] == pytest.approx(report["inference_loss"], rel=1e-5, abs=1e-7)
    # ...and its gradient is the original model's.
    assert report["fd_error"] is not None and report["fd_error"] < 1e-3, report


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    id: str
    build: Callable[[Net], str]
    x_shape: tuple = (2, 4, 8, 8)
    opset: int = 17
    exact: bool = True  # else |error| <= absolute + rel * max|y|
    rel: float = 0.0
    absolute: float = 0.0
    x_dims: tuple | None = None  # declared input dims when some are dynamic
    extra_shapes: list = field(default_factory=list)  # more input shapes to compare

    @property
    def op_type(self) -> str:  # the op rewritten: the id's first word
        return self.id.split()[0]


def _resize(mode, *, scales=None, sizes=None, opset=17, **attrs):
    def build(n: Net) -> str:
        if opset >= 13:
            ins = [n.x, "", n.const(scales) if scales else ""]
        else:  # roi and scales inputs are required
            ins = [n.x, n.const(np.zeros(0)), n.const(scales if scales else np.zeros(0))]
        if sizes:
            ins.append(n.const(sizes, np.int64))
        return n.op("Resize", ins, mode=mode, **attrs)

    return build


def _convt(w_shape, bias=False, **attrs):
    def build(n: Net) -> str:
        ins = [n.x, n.param("Wt", w_shape, normal=0.3)]
        if bias:
            ins.append(n.param("Bt", (w_shape[1] * attrs.get("group", 1),), normal=0.5))
        return n.op("ConvTranspose", ins, **attrs)

    return build


def _lstm_net(op, direction, *, n_in=None, states=True, hidden=3, use="Y", lbr=None):
    """An LSTM/GRU on X [5, 2, 6] (sequence, batch, input)."""
    gates = {"LSTM": 4, "GRU": 3}[op]
    n_in = n_in or {"LSTM": 7, "GRU": 6}[op]
    nd = 2 if direction == "bidirectional" else 1

    def build(n: Net) -> str:
        p = op.lower()
        ins = [
            n.x,
            n.param(f"{p}_W", (nd, gates * hidden, 6), normal=0.3),
            n.param(f"{p}_R", (nd, gates * hidden, hidden), normal=0.3),
            n.param(f"{p}_B", (nd, 2 * gates * hidden), normal=0.2),
        ]
        if states:
            ins += ["", n.param(f"{p}_h0", (nd, 2, hidden), normal=0.5, train=False)]
            if op == "LSTM":
                ins.append(n.param(f"{p}_c0", (nd, 2, hidden), normal=0.5, train=False))
        ins += [""] * (n_in - len(ins))
        attrs = {"hidden_size": hidden, "direction": direction}
        if lbr is not None:
            attrs["linear_before_reset"] = lbr
        outs = n.op(op, ins, outs=3 if op == "LSTM" else 2, **attrs)
        if use == "all":  # every output, flattened into one
            flat = [n.op("Reshape", [o, n.const([-1], np.int64)]) for o in outs]
            return n.op("Concat", flat, axis=0)
        return outs[0] if use == "Y" else outs[1]

    return build


_REFLECT = [0, 0, 2, 1, 0, 0, 1, 3]
CASES = [
    # ---- activations
    Case("HardSigmoid default", lambda n: n.op("HardSigmoid", [n.x])),
    Case("HardSigmoid torch", lambda n: n.op("HardSigmoid", [n.x], alpha=1 / 6)),
    Case("HardSigmoid paddle", lambda n: n.op("HardSigmoid", [n.x], alpha=0.16666670143604279)),
    Case("HardSigmoid other", lambda n: n.op("HardSigmoid", [n.x], alpha=0.3, beta=0.1)),
    Case("HardSigmoid opset9", lambda n: n.op("HardSigmoid", [n.x], alpha=1 / 6), opset=9),
    Case("HardSwish", lambda n: n.op("HardSwish", [n.x])),
    Case("PRelu channel", lambda n: n.op("PRelu", [n.x, n.param("slope", (4, 1, 1), low=-0.5)])),
    Case("PRelu dynamo", lambda n: n.op("PRelu", [n.x, n.param("slope", (1, 4, 1, 1), low=-1)])),
    Case("PRelu scalar", lambda n: n.op("PRelu", [n.x, n.param("slope", (1,), low=0.1)])),
    Case("Softsign", lambda n: n.op("Softsign", [n.x])),
    Case("ThresholdedRelu", lambda n: n.op("ThresholdedRelu", [n.x], alpha=0.5)),
    Case("ThresholdedRelu default", lambda n: n.op("ThresholdedRelu", [n.x])),
    Case("Elu", lambda n: n.op("Elu", [n.x]), exact=False, absolute=1.2e-7),
    Case("Elu alpha", lambda n: n.op("Elu", [n.x], alpha=0.5), exact=False, absolute=1.2e-7),
    Case("Selu", lambda n: n.op("Selu", [n.x]), exact=False, absolute=3.2e-7),
    Case("Celu", lambda n: n.op("Celu", [n.x]), exact=False, absolute=1.2e-7),
    Case("Celu alpha", lambda n: n.op("Celu", [n.x], alpha=2.0), exact=False, absolute=2.4e-7),
    Case("Softplus", lambda n: n.op("Softplus", [n.x]), exact=False, absolute=9.6e-7),
    Case("Mish", lambda n: n.op("Mish", [n.x]), opset=18, exact=False, absolute=1.5e-7, rel=1.5e-7),
    Case(
        "Gelu tanh",
        lambda n: n.op("Gelu", [n.x], approximate="tanh"),
        opset=20,
        exact=False,
        absolute=9.6e-7,
    ),
    Case("Sum", lambda n: n.op("Sum", [n.x, n.op("Mul", [n.x, n.const(0.5)]), n.const(1.0)])),
    Case("Mean 2", lambda n: n.op("Mean", [n.x, n.op("Mul", [n.x, n.const(0.3)])])),
    Case(
        "Mean 3",
        lambda n: n.op("Mean", [n.x, n.op("Abs", [n.x]), n.param("mb", (4, 1, 1), normal=1)]),
    ),
    # ---- normalization, dropout
    Case(
        "BatchNormalization",
        lambda n: n.op(
            "BatchNormalization",
            [
                n.x,
                n.param("bn_s", (4,)),
                n.param("bn_b", (4,), normal=1),
                n.param("bn_m", (4,), normal=0.3, train=False),
                n.param("bn_v", (4,), low=0.5, high=2.0, train=False),
            ],
        ),
    ),
    Case(
        "BatchNormalization 33 channels 1-D",
        lambda n: n.op(
            "BatchNormalization",
            [
                n.x,
                n.param("bn_s", (33,)),
                n.param("bn_b", (33,), normal=1),
                n.param("bn_m", (33,), normal=0.3, train=False),
                n.param("bn_v", (33,), low=0.1, high=3.0, train=False),
            ],
            epsilon=9.999999747378752e-06,
        ),
        x_shape=(2, 33, 7),
    ),
    Case("Dropout", lambda n: n.op("Dropout", [n.x, n.const(0.2)])),
    Case("Dropout mask", lambda n: n.op("Dropout", [n.x, n.const(0.5)], outs=2)[0]),
    Case(
        "Dropout training_mode false",
        lambda n: n.op("Dropout", [n.x, n.const(0.2), n.const(False, np.bool_)]),
    ),
    Case(
        "LayerNormalization no bias",
        lambda n: n.op("LayerNormalization", [n.x, n.param("ln_s", (8,))], axis=-1),
    ),
    Case(
        "LayerNormalization axis1",
        lambda n: n.op(
            "LayerNormalization",
            [n.x, n.param("ln_s", (4, 8, 8)), n.param("ln_b", (4, 8, 8), normal=1)],
            axis=1,
        ),
    ),
    Case(
        "InstanceNormalization",
        lambda n: n.op(
            "InstanceNormalization", [n.x, n.param("in_s", (4,)), n.param("in_b", (4,), normal=1)]
        ),
        exact=False,
        rel=2.5e-7,
    ),
    # ---- resampling
    Case(
        "Resize nearest torch",
        _resize(
            "nearest",
            scales=[1, 1, 2, 2],
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
    ),
    Case("Resize nearest sizes", _resize("nearest", sizes=[2, 4, 16, 16])),
    Case("Resize nearest 1.5 and 0.625", _resize("nearest", sizes=[2, 4, 12, 5])),
    Case(
        "Resize nearest x3 H only, round_prefer_ceil",
        _resize("nearest", scales=[1, 1, 3, 1], nearest_mode="round_prefer_ceil"),
    ),
    Case(
        "Resize nearest opset 11 roi",
        _resize(
            "nearest",
            scales=[1, 1, 2, 2],
            opset=11,
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        opset=11,
    ),
    Case(
        "Resize nearest dynamic H W",
        _resize(
            "nearest",
            scales=[1, 1, 2, 2],
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        x_dims=(2, 4, "H", "W"),
        extra_shapes=[(2, 4, 5, 3), (2, 4, 1, 9)],
    ),
    Case(
        "Resize linear",
        _resize("linear", scales=[1, 1, 2, 2], coordinate_transformation_mode="pytorch_half_pixel"),
        exact=False,
        rel=2e-7,
    ),
    Case(
        "Resize linear align_corners",
        _resize("linear", scales=[1, 1, 2, 2], coordinate_transformation_mode="align_corners"),
        exact=False,
        rel=2e-7,
    ),
    Case("Resize cubic", _resize("cubic", scales=[1, 1, 2, 2]), exact=False, rel=2e-7),
    Case(
        "Resize linear antialias down",
        _resize("linear", sizes=[2, 4, 5, 3], antialias=1),
        opset=18,
        exact=False,
        rel=2e-7,
    ),
    Case("ConvTranspose k2s2", _convt((4, 2, 2, 2), strides=[2, 2]), exact=False, rel=4e-7),
    Case(
        "ConvTranspose k3s2p1op1 bias",
        _convt((4, 2, 3, 3), bias=True, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose k4s2p1 group2",
        _convt((4, 3, 4, 4), strides=[2, 2], pads=[1, 1, 1, 1], group=2),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose k3s1 dilation2",
        _convt((4, 2, 3, 3), pads=[2, 2, 2, 2], dilations=[2, 2]),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose strides 2x3 asymmetric pads crop",
        _convt((4, 3, 1, 2), bias=True, strides=[2, 3], pads=[0, 1, 0, 2]),
        exact=False,
        rel=4e-7,
    ),
    # auto_pad SAME_*: ORT's ConvGrad trains them with a wrong (or zero) gradient
    Case(
        "Conv SAME_UPPER even kernel",
        lambda n: n.op(
            "Conv",
            [n.x, n.param("Ws", (4, 4, 4, 4), normal=0.3), n.param("Bs", (4,))],
            auto_pad="SAME_UPPER",
            kernel_shape=[4, 4],
        ),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "Conv SAME_LOWER strided",
        lambda n: n.op(
            "Conv",
            [n.x, n.param("Wl", (4, 4, 3, 2), normal=0.3)],
            auto_pad="SAME_LOWER",
            strides=[2, 1],
        ),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose 1-D",
        _convt((4, 2, 3), strides=[3], pads=[1, 0], output_padding=[2]),
        x_shape=(2, 4, 9),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose dynamic H W",
        _convt((4, 2, 3, 3), bias=True, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        x_dims=("N", 4, "H", "W"),
        extra_shapes=[(1, 4, 3, 5)],
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose 3-D",
        _convt((4, 2, 2, 3, 2), bias=True, strides=[2, 1, 2], pads=[0, 1, 0, 0, 1, 1]),
        x_shape=(1, 4, 3, 4, 4),
        exact=False,
        rel=4e-7,
    ),
    # 1-D convs as 2-D ones over a unit axis (onnxruntime-web mis-trains 1-D ones)
    Case(
        "Conv 1-D grouped strided dilated",
        lambda n: n.op(
            "Conv",
            [n.x, n.param("W1", (6, 2, 3), normal=0.3), n.param("B1", (6,), normal=0.5)],
            group=2,
            strides=[2],
            dilations=[2],
            pads=[1, 2],
        ),
        x_shape=(2, 4, 11),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "Conv 1-D frozen weight, SAME_UPPER",
        lambda n: n.op(
            "Conv",
            [n.x, n.param("W1f", (4, 4, 4), normal=0.3, train=False), n.param("B1f", (4,))],
            auto_pad="SAME_UPPER",
            kernel_shape=[4],
        ),
        x_shape=(2, 4, 9),
        exact=False,
        rel=4e-7,
    ),
    Case(
        "ConvTranspose 1-D",
        _convt((4, 3, 3), bias=True, strides=[2], pads=[1, 0]),
        x_shape=(2, 4, 7),
        exact=False,
        rel=4e-7,
    ),
    Case("Resize nearest by 1", _resize("nearest", scales=[1, 1, 1, 1])),
    Case("DepthToSpace", lambda n: n.op("DepthToSpace", [n.x], blocksize=2)),
    Case("DepthToSpace CRD", lambda n: n.op("DepthToSpace", [n.x], blocksize=2, mode="CRD")),
    Case("SpaceToDepth", lambda n: n.op("SpaceToDepth", [n.x], blocksize=2)),
    # ---- data movement, pooling
    Case(
        "Split first used", lambda n: n.op("Split", [n.x, n.const([1, 3], np.int64)], 2, axis=1)[0]
    ),
    Case(
        "Split last used", lambda n: n.op("Split", [n.x, n.const([1, 3], np.int64)], 2, axis=1)[1]
    ),
    Case("Split opset11", lambda n: n.op("Split", [n.x], 3, axis=-1, split=[2, 5, 1])[1], opset=11),
    Case("Split equal", lambda n: n.op("Split", [n.x], 4, axis=2)[2]),
    Case(
        "Split num_outputs",
        lambda n: n.op("Concat", n.op("Split", [n.x], 3, axis=3, num_outputs=3)[1:], axis=3),
        opset=18,
    ),
    Case("Pad reflect", lambda n: n.op("Pad", [n.x, n.const(_REFLECT, np.int64)], mode="reflect")),
    Case("Pad edge", lambda n: n.op("Pad", [n.x, n.const(_REFLECT, np.int64)], mode="edge")),
    Case(
        "Pad reflect crop",
        lambda n: n.op("Pad", [n.x, n.const([0, 0, -2, 3, 0, 0, 2, -1], np.int64)], mode="reflect"),
    ),
    Case(
        "Pad wrap",
        lambda n: n.op("Pad", [n.x, n.const([0, 0, 2, 1, 0, 0, 3, 5], np.int64)], mode="wrap"),
        opset=19,
    ),
    Case(
        "Pad wrap axes crop",
        lambda n: n.op(
            "Pad", [n.x, n.const([3, -1], np.int64), "", n.const([-1], np.int64)], mode="wrap"
        ),
        opset=19,
    ),
    Case("GlobalMaxPool", lambda n: n.op("GlobalMaxPool", [n.x])),
]
RNN_CASES = [
    Case("LSTM forward 4 inputs", _lstm_net("LSTM", "forward", n_in=4, states=False), (5, 2, 6)),
    Case("LSTM reverse", _lstm_net("LSTM", "reverse"), (5, 2, 6)),
    # Bidirectional LSTM: bit-exact when ORT folds the per-direction Gather of W (its
    # default); unfolded, its LSTM kernel multiplies unpacked weights in another order.
    Case(
        "LSTM bidirectional",
        _lstm_net("LSTM", "bidirectional", use="all"),
        (5, 2, 6),
        exact=False,
        rel=2e-7,
    ),
    Case(
        "LSTM bidirectional Y_h",
        _lstm_net("LSTM", "bidirectional", use="Y_h"),
        (5, 2, 6),
        exact=False,
        rel=2e-7,
    ),
    Case(
        "GRU bidirectional lbr1",
        _lstm_net("GRU", "bidirectional", lbr=1, use="all"),
        (5, 2, 6),
    ),
    Case("GRU reverse", _lstm_net("GRU", "reverse", n_in=4, states=False), (5, 2, 6)),
    Case(
        "LSTM bidirectional dynamic sequence",
        _lstm_net("LSTM", "bidirectional", use="all"),
        (5, 2, 6),
        x_dims=("S", 2, 6),
        extra_shapes=[(1, 2, 6), (9, 2, 6)],
        exact=False,
        rel=2e-7,
    ),
]


def build(case: Case, train: bool = False) -> tuple[Net, onnx.ModelProto]:
    n = Net(case.x_dims or case.x_shape, case.opset, train=train)
    return n, n.model(case.build(n))


def assert_close(case: Case, a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    error = float(np.abs(a.astype(np.float64) - b).max())
    if case.exact:  # bit-identical, signs of zero included
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), error
    else:
        assert error <= case.absolute + case.rel * np.abs(a).max()


@pytest.mark.parametrize("case", CASES + RNN_CASES, ids=lambda c: c.id)
def test_rewrite_computes_the_original_function(case: Case):
    _, model = build(case)
    new, done = rewritten(model)
    assert [r.op for r in done] == [case.op_type]
    assert done[0].exact == case.exact
    assert ("bit-exact" in done[0].description) == case.exact
    left = {n.op_type for n in new.graph.node}
    if case.op_type not in ("LayerNormalization", "LSTM", "GRU", "Conv"):  # those stay, reshaped
        assert case.op_type not in left
    assert not {t.name for t in new.graph.initializer} - {t.name for t in model.graph.initializer}
    for shape in [case.x_shape, *case.extra_shapes]:
        for optimize in (True, False):
            before, after = session(model, optimize), session(new, optimize)
            for x in inputs_for(shape):
                a, b = before.run(None, {"X": x})[0], after.run(None, {"X": x})[0]
                assert_close(case, a, b)


# ORT's gradient graphs use opset-11 forms (Equal on floats, ...): older models cannot train
# whatever their ops, so their rewrites are checked for equivalence only.
@pytest.mark.parametrize("case", [c for c in CASES if c.opset >= 11], ids=lambda c: c.id)
def test_rewrite_trains_with_the_original_gradient(case: Case):
    net, model = build(case, train=True)
    x = inputs_for(case.x_shape, seed=7)[1]
    report = training_report(model, net.trainable, x)
    assert report["rewrites"] == [case.op_type]
    assert_trains(report)


# --------------------------------------------------------------------------- LSTM / GRU
def _rnn_reports(jobs: list[dict]) -> list[dict]:
    """Run ``_child_main`` on ``jobs`` in a child interpreter (ORT may crash it)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.training import test_rewrites; test_rewrites._child_main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:], lines)
    return [json.loads(ln) for ln in lines]


def _child_main() -> None:
    for job in json.loads(sys.stdin.read()):
        print(json.dumps({"job": job["id"], "stage": "start"}), flush=True)
        if job["kind"] == "case":
            case = next(c for c in RNN_CASES if c.id == job["id"])
            net, model = build(case, train=True)
            trainable = [p for p in net.trainable if p not in job["frozen"]]
            x = inputs_for(case.x_shape, seed=7)[1]
        else:  # a real export
            model, trainable, x = _real_export_job(job)
        report = training_report(model, trainable, x, frozen=frozenset(job["frozen"]))
        print(json.dumps({"job": job["id"], **report}), flush=True)


def _real_export_job(job: dict):
    model, reference = _real_export(job["name"], job["exporter"])
    return model, _plan_trainable(model, set(job["frozen"])), reference["input"]


def _real_export(name: str, exporter: str) -> tuple[onnx.ModelProto, dict]:
    """A corpus export, normalised for training, its input renamed X; and its reference I/O."""
    from tests.support.corpus import torch_models

    (tm,) = torch_models((name,), (exporter,))
    model, _ = prepare_for_training(onnx.load(str(tm.path)))
    _rename_input(model, "X")
    return model, dict(np.load(tm.io_path))


def _plan_trainable(model: onnx.ModelProto, frozen: set) -> list[str]:
    """What make-artifacts would train: freeze_plan on the rewritten graph (minus the
    parameters the rewrites add, which training_report adds itself)."""
    new, done = rewritten(model, frozen)
    plan = freeze_plan(new, [new.graph.output[0].name], [], freeze=sorted(frozen))
    added = {p for r in done for p in r.parameters}
    return [p for p in plan.trainable if p not in added]


def _rename_input(model: onnx.ModelProto, name: str) -> None:
    old = model.graph.input[0].name
    model.graph.input[0].name = name
    for node in model.graph.node:
        for k, i in enumerate(node.input):
            if i == old:
                node.input[k] = name


def test_lstm_and_gru_rewrites_train():
    """Forward padding, reverse/bidirectional splits: one step, the original's gradient."""
    jobs = [{"kind": "case", "id": c.id, "frozen": []} for c in RNN_CASES]
    # W and R frozen: the zero gate keeps ORT from crashing; it never moves.
    jobs.append({"kind": "case", "id": "LSTM bidirectional", "frozen": ["lstm_W", "lstm_R"]})
    jobs.append({"kind": "case", "id": "GRU reverse", "frozen": ["gru_R"]})
    reports = [r for r in _rnn_reports(jobs) if "loss" in r]
    assert len(reports) == len(jobs)
    for job, report in zip(jobs, reports):
        gates = report["added"]
        assert len(gates) == (1 if job["frozen"] else 0), job
        assert_trains(report, zero_grad=gates)
        for gate in gates:
            assert gate.startswith(ZERO_GATE_PREFIX)
            assert report["added_after_step"][gate] == [0.0]


def test_zero_gate_only_when_a_weight_is_frozen():
    case = next(c for c in RNN_CASES if c.id == "LSTM reverse")
    _, model = build(case)
    _, done = rewritten(model, frozen={"lstm_W"})
    (record,) = done
    assert record.parameters == (f"{ZERO_GATE_PREFIX}{record.node}",)
    assert record.parameters[0] in record.description
    _, done = rewritten(model, frozen={"lstm_B"})
    assert done[0].parameters == ()


# --------------------------------------------------------------------------- left alone
@pytest.mark.parametrize(
    "op, build_fn, opset",
    [
        ("Gelu", lambda n: n.op("Gelu", [n.x]), 20),
        ("LayerNormalization", lambda n: n.op("LayerNormalization", [n.x, n.param("s", (8,)), n.param("b", (8,))], 3)[0], 17),  # noqa: E501
        ("Split", lambda n: n.op("Concat", n.op("Split", [n.x], 2, axis=1), axis=1), 17),
        ("Pad", lambda n: n.op("Pad", [n.x, n.const(_REFLECT, np.int64)]), 17),
        ("Dropout", lambda n: n.op("Dropout", [n.x, n.const(0.2), n.const(True, np.bool_)]), 17),
        ("ConvTranspose", _convt((4, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"), 17),
        ("LSTM", _lstm_net("LSTM", "forward"), 17),
    ],
    ids=["Gelu erf", "LayerNormalization complete", "Split all used", "Pad constant",
         "Dropout training", "ConvTranspose SAME_UPPER", "LSTM forward 7 inputs"],
)  # fmt: skip
def test_forms_that_train_or_cannot_be_rewritten_are_left_alone(op, build_fn, opset):
    n = Net((5, 2, 6) if op == "LSTM" else (2, 4, 8, 8), opset)
    model = n.model(build_fn(n))
    new, done = rewritten(model)
    assert done == []
    assert new.SerializeToString() == model.SerializeToString()


def test_dynamic_linear_resize_is_left_alone():
    case = Case("Resize", _resize("linear", scales=[1, 1, 2, 2]), x_dims=(2, 4, "H", "W"))
    _, model = build(case)
    assert rewritten(model)[1] == []


def test_rewritten_ops_and_record():
    assert {"HardSwish", "Resize", "ConvTranspose", "LSTM", "BatchNormalization"} <= REWRITTEN_OPS
    _, model = build(_case("HardSwish"))
    (record,) = rewritten(model)[1]
    assert record == Rewrite(
        op="HardSwish",
        node="n1_HardSwish",
        description="HardSwish -> Mul(x, Clip(x*(1/6) + 0.5, 0, 1)), bit-exact",
        exact=True,
    )
    new = rewritten(model)[0]
    assert all(n.name.startswith("n1_HardSwish/onnxfix_rewrite/") for n in new.graph.node[:-1])


# --------------------------------------------------------------------------- the need
def _case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


@pytest.mark.parametrize(
    "case_id, error",
    [
        ("HardSwish", "gradient builder has not been registered: HardSwish"),
        ("PRelu channel", "gradient builder has not been registered: PRelu"),
        ("ConvTranspose k2s2", "ConvTransposeGrad"),
        ("Resize nearest torch", "ResizeGrad"),
    ],
)
def test_original_ops_do_not_train(case_id, error):
    net, model = build(_case(case_id), train=True)
    x = inputs_for(net.x_shape)[0]
    target = session(model).run(None, {"X": x})[0]
    with pytest.raises(Exception, match=error):
        train_step(model, net.trainable, [], (x, target))


@pytest.mark.parametrize("case_id", ["Split first used", "Dropout mask"])
def test_original_ops_train_with_a_wrong_gradient(case_id):
    """Without the rewrite ORT trains these, silently, with the wrong gradient."""
    net, model = build(_case(case_id), train=True)
    x = inputs_for(net.x_shape, seed=7)[1]
    report = training_report(model, net.trainable, x, rewrite=False)
    assert report["fd_error"] > 0.1


def test_batchnorm_trains_with_running_statistics_only_when_rewritten():
    net, model = build(_case("BatchNormalization"), train=True)
    x = inputs_for(net.x_shape, seed=7)[1]
    target = np.zeros_like(session(model).run(None, {"X": x})[0])
    as_is, _, _ = train_step(model, net.trainable, [], (x, target))
    report = training_report(model, net.trainable, x)
    assert abs(as_is - report["inference_loss"]) > 1e-2 * report["inference_loss"]
    assert report["loss"] == pytest.approx(report["inference_loss"], rel=1e-6)


# --------------------------------------------------------------------------- real exports
REAL = [
    ("mobile_block", {"HardSwish", "HardSigmoid", "PRelu"}),
    ("fpn_resize", {"Resize"}),
    ("convtranspose", {"ConvTranspose"}),
    ("conv_lstm", {"LSTM"}),
]


@pytest.mark.parametrize("name, ops", REAL, ids=[name for name, _ in REAL])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_real_export_rewritten_matches_reference(name, ops, exporter):
    model, reference = _real_export(name, exporter)
    new, done = rewritten(model)
    assert {r.op for r in done} == ops
    assert not ops & {n.op_type for n in new.graph.node} - {"LSTM"}
    y = session(new).run(None, {"X": reference["input"]})[0]
    np.testing.assert_allclose(y, reference["output"], rtol=0, atol=1e-5)
    if name == "conv_lstm":
        return  # trained in a child process below
    report = training_report(model, _plan_trainable(model, set()), reference["input"])
    assert_trains(report)


def test_real_conv_lstm_trains_with_and_without_frozen_weights():
    jobs = []
    for exporter in ("torchscript", "dynamo"):
        model, _ = _real_export("conv_lstm", exporter)
        lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
        for frozen in ([], [lstm.input[1], lstm.input[2]]):
            jobs.append(
                {"kind": "real", "id": f"{exporter} {len(frozen)}", "name": "conv_lstm",
                 "exporter": exporter, "frozen": frozen}
            )  # fmt: skip
    reports = [r for r in _rnn_reports(jobs) if "loss" in r]
    assert len(reports) == len(jobs)
    for job, report in zip(jobs, reports):
        assert report["rewrites"] == ["LSTM"]
        assert len(report["added"]) == (1 if job["frozen"] else 0)
        assert_trains(report, zero_grad=report["added"])


def test_paddle_cls_rewrites_are_bit_exact():
    """PaddleOCR's cls model: 35 BatchNormalization (its own inv_std measured from ORT) and
    9 HardSigmoid nodes, dynamic input dims; the rewritten model's output is bit-identical."""
    from tests.support.corpus import PADDLE_CLS_MODEL

    model, _ = prepare_for_training(onnx.load(str(PADDLE_CLS_MODEL)))
    new, done = rewritten(model)
    assert sorted({r.op for r in done}) == ["BatchNormalization", "HardSigmoid"]
    assert len(done) == 44 and all(r.exact for r in done)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32)
    name = model.graph.input[0].name
    a = session(model, optimize=False).run(None, {name: x})[0]
    b = session(new, optimize=False).run(None, {name: x})[0]
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))

#!/usr/bin/env python
"""Probe which ONNX ops onnxruntime-training 1.19.2 can train through on CPU, and whether
onnxfix's training rewrites fix the ones it cannot.

Op cases: a tiny float32 model ``X -> Conv(W) -> <op> -> out`` (opset 17 unless the op needs
another) goes through ``artifacts.generate_artifacts`` (MSELoss, AdamW,
``requires_grad=[W, ...]``), the written artifacts are lowered to the IR version ONNX Runtime
loads, and CheckpointState / Module / Optimizer run one training step, one optimizer step and
one eval step. Each case runs in its own subprocess (some crash the interpreter) with a
timeout.

Rewrite cases: for every op case whose op onnxfix rewrites (``REWRITTEN_OPS``), the same
model is passed through onnxfix's own ``rewrite_for_training`` (the code that ships, with every
parameter but the trainable ones frozen) and probed the same way.

For cases that train, two further checks run:

* gradient check: the directional derivative of the loss from ORT's gradients, against a
  central finite difference of the same loss computed with an InferenceSession on the
  ORIGINAL op's model (so a passing rewrite has the original op's true gradient);
* forward parity: the loss of the training step against the inference loss at the same
  parameters (a difference means the training graph computes something else, e.g.
  BatchNormalization switching to batch statistics).

Rewrite cases also compare the rewritten model with the original one on random and special
inputs with an InferenceSession (bitwise, or the largest difference in float32 ulps).

Usage::

    python tools/probe_ort_gradients.py --json docs/ort-gradients.json --out docs/ort-gradients.md
    python tools/probe_ort_gradients.py --only PRelu --only 'rewrite:PRelu*'

``--json`` writes the machine-readable results (committed; ``tests/test_ort_facts.py`` checks
``onnxfix/training/ort_facts.py`` against them). ``--out`` replaces the text between
``<!-- probe:begin -->`` and ``<!-- probe:end -->`` in a markdown file with tables rendered
from those same results (:func:`render`), and ``--from-json`` re-renders them without running.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import fnmatch
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxfix.training.rewrites import REWRITTEN_OPS, rewrite_for_training

RESULT_MARK = "@@RESULT@@ "
STAGE_MARK = "@@STAGE@@ "
BEGIN_MARK = "<!-- probe:begin -->"
END_MARK = "<!-- probe:end -->"
REWRITE_PREFIX = "rewrite:"
# The trainable scalar 1.0 in front of the op in the equivalence models (see G).
ONE = "one"
# A gradient is wrong when the finite difference misses it by more than this (relative to the
# gradient's norm); float32 finite differences of correct gradients stay below 2e-5, except
# through a float16 Cast (1.5e-3).
GRAD_TOLERANCE = 2e-3

# --------------------------------------------------------------------------------------------
# Model building
# --------------------------------------------------------------------------------------------


class G:
    """A tiny graph under construction.

    ``conv=True``: input X [2,3,8,8] -> Conv(W [4,3,3,3], pads 1) -> ``self.y`` [2,4,8,8].
    ``conv=False``: input X [2,4,8,8] -> Mul(X, one) -> ``self.y``, to compare an op with its
    rewrite on chosen inputs. ``one`` is a trainable 1.0: it changes no value, but a trainable
    parameter then sits upstream of the op as W does in the training model, so the rewrites
    that depend on what trains (the LSTM/GRU zero gate) choose alike in both.
    ``conv=None``: input X [2,4,8,8] is ``self.y``.
    Parameters are drawn from an RNG seeded by their name, so every model of a case gets
    identical values.
    """

    def __init__(self, opset: int = 17, conv: bool | None = True):
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.n = 0
        self.x_shape = (2, 4, 8, 8)
        self.upstream, self.y = None, "X"
        if conv:
            self.x_shape = (2, 3, 8, 8)
            self.upstream = self.param("W", (4, 3, 3, 3), scale=0.3)
            self.y = self.op("Conv", ["X", "W"], pads=[1, 1, 1, 1])
        elif conv is False:
            self.upstream = self.init(ONE, np.ones(1, np.float32))
            self.y = self.op("Mul", ["X", ONE])

    # parameters and constants -----------------------------------------------------------
    @staticmethod
    def draw(name: str, shape, scale: float = 1.0, low=None, high=None) -> np.ndarray:
        """The values ``param(name, ...)`` gets (a name-seeded RNG)."""
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        if low is not None:
            arr = rng.uniform(low, high, size=shape)
        else:
            arr = rng.standard_normal(shape) * scale
        return np.asarray(arr, np.float32)

    def param(self, name: str, shape, scale: float = 1.0, low=None, high=None) -> str:
        return self.init(name, self.draw(name, shape, scale, low, high))

    def init(self, name: str, arr) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def c(self, value, dtype=np.float32) -> str:
        self.n += 1
        return self.init(f"c{self.n}", np.asarray(value, dtype))

    def i64(self, value) -> str:
        return self.c(value, np.int64)

    # nodes ------------------------------------------------------------------------------
    def op(self, op_type: str, inputs, outs: int = 1, **attrs):
        from onnx import helper

        self.n += 1
        names = [f"t{self.n}_{k}" for k in range(outs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), names, name=f"n{self.n}_{op_type}", **attrs)
        )
        return names[0] if outs == 1 else names

    def model(self, out: str):
        from onnx import TensorProto, helper

        nodes = list(self.nodes)
        nodes.append(helper.make_node("Identity", [out], ["out"], name="n_out"))
        graph = helper.make_graph(
            nodes,
            "probe",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(self.x_shape))],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 10 if self.opset > 8 else 4
        return model


@dataclass
class Case:
    name: str
    op: str  # the op the case is about
    build: Callable[[G], str]
    opset: int = 17
    grad: tuple = ()  # trainable op parameters besides the upstream W (or ONE)
    note: str = ""
    kind: str = "op"  # "op" or "rewrite"
    ref: str | None = None  # rewrite: the op case it rewrites


CASES: dict[str, Case] = {}


def case(name, op=None, **kw):
    def deco(fn):
        CASES[name] = Case(name=name, op=op or name.split(" ")[0], build=fn, **kw)
        return fn

    return deco


# --------------------------------------------------------------------------------------------
# Op cases
# --------------------------------------------------------------------------------------------


def _pos(g: G, y: str) -> str:
    """y*y + 1 (strictly positive; Mul and Add have CPU gradients)."""
    return g.op("Add", [g.op("Mul", [y, y]), g.c(1.0)])


# ---- baselines and elementwise activations ----------------------------------------------

case("Conv", note="baseline: X -> Conv(W) -> out")(lambda g: g.y)
case("Conv depthwise+bias", op="Conv", grad=("W2", "B2"))(
    lambda g: g.op(
        "Conv",
        [g.y, g.param("W2", (4, 1, 3, 3), 0.3), g.param("B2", (4,))],
        group=4,
        pads=[1, 1, 1, 1],
    )
)
case("Conv frozen", op="Conv", note="second Conv with a frozen weight W2 (only dX needed)")(
    lambda g: g.op("Conv", [g.y, g.param("W2f", (4, 4, 3, 3), 0.2)], pads=[1, 1, 1, 1])
)
case(
    "Conv 1-D grouped, weight frozen",
    op="Conv",
    grad=("B1d",),
    note="Reshape to [N, 4, 64], 1-D Conv group 2 with a frozen weight W1d and a trainable bias",
)(
    lambda g: g.op(
        "Conv",
        [
            g.op("Reshape", [g.y, g.i64([2, 4, 64])]),
            g.init("W1d", G.draw("W1d", (4, 2, 3), 0.3)),
            g.param("B1d", (4,)),
        ],
        group=2,
        pads=[1, 1],
    )
)
case(
    "Conv SAME_UPPER",
    op="Conv",
    grad=("Wsu",),
    note="second Conv, auto_pad SAME_UPPER, kernel 4x4 (trainable weight Wsu)",
)(
    lambda g: g.op(
        "Conv",
        [g.y, g.param("Wsu", (4, 4, 4, 4), 0.2)],
        auto_pad="SAME_UPPER",
        kernel_shape=[4, 4],
    )
)
case("Gemm frozen", op="Gemm", note="Flatten -> Gemm(B, C frozen, transB=1)")(
    lambda g: g.op(
        "Gemm",
        [g.op("Flatten", [g.y], axis=1), g.param("Bgf", (10, 256), 0.05), g.param("Cgf", (10,))],
        transB=1,
    )
)
for _op in [
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Abs",
    "Neg",
    "Identity",
    "Softplus",
    "Softsign",
    "Elu",
    "Selu",
    "Celu",
    "HardSwish",
]:
    case(_op)(lambda g, _op=_op: g.op(_op, [g.y]))
case("Exp")(lambda g: g.op("Exp", [g.y]))
case("LeakyRelu", note="alpha=0.1")(lambda g: g.op("LeakyRelu", [g.y], alpha=0.1))
case("HardSigmoid", note="alpha=0.2, beta=0.5 (ONNX default)")(lambda g: g.op("HardSigmoid", [g.y]))
case("HardSigmoid torch", op="HardSigmoid", note="alpha=1/6, beta=0.5 (torch export)")(
    lambda g: g.op("HardSigmoid", [g.y], alpha=1.0 / 6.0, beta=0.5)
)
case("Mish", opset=18)(lambda g: g.op("Mish", [g.y]))
case("Gelu", opset=20, note="opset 20, approximate='none'")(lambda g: g.op("Gelu", [g.y]))
case(
    "Gelu tanh",
    op="Gelu",
    opset=20,
    note="opset 20, approximate='tanh'; the error is too small for the FD check, the special "
    "check gelu_tanh measures it",
)(lambda g: g.op("Gelu", [g.y], approximate="tanh"))
case("PRelu", note="slope [4,1,1] frozen")(
    lambda g: g.op("PRelu", [g.y, g.param("slope", (4, 1, 1), low=-0.5, high=0.5)])
)
case("PRelu trainable", op="PRelu", grad=("slope",), note="slope [4,1,1] trainable")(
    lambda g: g.op("PRelu", [g.y, g.param("slope", (4, 1, 1), low=-0.5, high=0.5)])
)
case("Clip", note="min/max inputs 0, 6 (ReLU6)")(lambda g: g.op("Clip", [g.y, g.c(0.0), g.c(6.0)]))
case("Clip min-only", op="Clip", note="min input only")(lambda g: g.op("Clip", [g.y, g.c(-0.5)]))
case("Softmax", note="axis=1")(lambda g: g.op("Softmax", [g.y], axis=1))
case("LogSoftmax", note="axis=1")(lambda g: g.op("LogSoftmax", [g.y], axis=1))

# ---- arithmetic -------------------------------------------------------------------------
case("Add", note="y + const[4,1,1]")(lambda g: g.op("Add", [g.y, g.param("cb", (4, 1, 1))]))
case("Sub", note="const - y")(lambda g: g.op("Sub", [g.c(1.0), g.y]))
case("Mul", note="y * y")(lambda g: g.op("Mul", [g.y, g.y]))
case("Div", note="y / (y*y+1)")(lambda g: g.op("Div", [g.y, _pos(g, g.y)]))
case("Pow", note="y ** 2 (exponent const)")(lambda g: g.op("Pow", [g.y, g.c(2.0)]))
case("Pow y^3", op="Pow", note="y ** 3")(lambda g: g.op("Pow", [g.y, g.c(3.0)]))
case("Sqrt", note="sqrt(y*y+1)")(lambda g: g.op("Sqrt", [_pos(g, g.y)]))
case("Log", note="log(y*y+1)")(lambda g: g.op("Log", [_pos(g, g.y)]))
case("Reciprocal", note="1/(y*y+1)")(lambda g: g.op("Reciprocal", [_pos(g, g.y)]))
case("Max", note="Max(y, 0)")(lambda g: g.op("Max", [g.y, g.c(0.0)]))
case("Max 2 vars", op="Max", note="Max(y, 0.3*y)")(
    lambda g: g.op("Max", [g.y, g.op("Mul", [g.y, g.c(0.3)])])
)
case("Min", note="Min(y, 1)")(lambda g: g.op("Min", [g.y, g.c(1.0)]))
case("Sum", note="Sum(y, 0.5*y, const)")(
    lambda g: g.op("Sum", [g.y, g.op("Mul", [g.y, g.c(0.5)]), g.c(1.0)])
)
case("Mean", note="Mean(y, 0.5*y)")(lambda g: g.op("Mean", [g.y, g.op("Mul", [g.y, g.c(0.5)])]))
case("Where", note="Where(y>0, y, 0.1*y)")(
    lambda g: g.op("Where", [g.op("Greater", [g.y, g.c(0.0)]), g.y, g.op("Mul", [g.y, g.c(0.1)])])
)
case("Cast", note="float -> double -> float")(
    lambda g: g.op("Cast", [g.op("Cast", [g.y], to=11)], to=1)
)
case("Cast fp16", op="Cast", note="float -> float16 -> float")(
    lambda g: g.op("Cast", [g.op("Cast", [g.y], to=10)], to=1)
)

# ---- pooling / reductions -----------------------------------------------------------------
case("GlobalAveragePool")(lambda g: g.op("GlobalAveragePool", [g.y]))
case("GlobalMaxPool")(lambda g: g.op("GlobalMaxPool", [g.y]))
case("AveragePool", note="k2 s2")(
    lambda g: g.op("AveragePool", [g.y], kernel_shape=[2, 2], strides=[2, 2])
)
case("AveragePool k3p1", op="AveragePool", note="k3 s1 p1 count_include_pad=0")(
    lambda g: g.op("AveragePool", [g.y], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
)
case("MaxPool", note="k2 s2")(lambda g: g.op("MaxPool", [g.y], kernel_shape=[2, 2], strides=[2, 2]))
case("MaxPool k3s2p1", op="MaxPool", note="k3 s2 p1 (ResNet stem)")(
    lambda g: g.op("MaxPool", [g.y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
)
case("ReduceMean", note="opset 17, axes attr [2,3], keepdims=1")(
    lambda g: g.op("ReduceMean", [g.y], axes=[2, 3])
)
case("ReduceMean 18", op="ReduceMean", opset=18, note="opset 18, axes input [2,3]")(
    lambda g: g.op("ReduceMean", [g.y, g.i64([2, 3])])
)
case("ReduceSum", note="axes input [2,3]")(lambda g: g.op("ReduceSum", [g.y, g.i64([2, 3])]))
case("ReduceMax", note="opset 17, axes attr [2,3]")(lambda g: g.op("ReduceMax", [g.y], axes=[2, 3]))
case("ReduceMax 18", op="ReduceMax", opset=18, note="opset 18, axes input [2,3]")(
    lambda g: g.op("ReduceMax", [g.y, g.i64([2, 3])])
)
case("ReduceL2", note="axes attr [2,3]")(lambda g: g.op("ReduceL2", [g.y], axes=[2, 3]))
case("ArgMax", note="y + Cast(ArgMax(y, axis=1, keepdims=1))")(
    lambda g: g.op("Add", [g.y, g.op("Cast", [g.op("ArgMax", [g.y], axis=1)], to=1)])
)

# ---- resampling ---------------------------------------------------------------------------
case("Resize nearest", op="Resize", note="scales [1,1,2,2], asymmetric, floor (torch)")(
    lambda g: g.op(
        "Resize",
        [g.y, "", g.c([1, 1, 2, 2])],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
)
case("Resize nearest sizes", op="Resize", note="sizes [2,4,16,16], half_pixel, round_prefer_floor")(
    lambda g: g.op("Resize", [g.y, "", "", g.i64([2, 4, 16, 16])], mode="nearest")
)
case("Resize linear", op="Resize", note="scales x2, linear, pytorch_half_pixel")(
    lambda g: g.op(
        "Resize",
        [g.y, "", g.c([1, 1, 2, 2])],
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )
)
case("Resize linear ac", op="Resize", note="scales x2, linear, align_corners")(
    lambda g: g.op(
        "Resize",
        [g.y, "", g.c([1, 1, 2, 2])],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    )
)
case("Resize cubic", op="Resize", note="scales x2, cubic, half_pixel")(
    lambda g: g.op("Resize", [g.y, "", g.c([1, 1, 2, 2])], mode="cubic")
)
case(
    "Resize nearest x1.5 down",
    op="Resize",
    note="sizes [2,4,12,5] (up 1.5 and down 0.625), half_pixel, round_prefer_floor",
)(lambda g: g.op("Resize", [g.y, "", "", g.i64([2, 4, 12, 5])], mode="nearest"))
case("Upsample", opset=9, note="opset 9 (Upsample is deprecated from opset 10), nearest x2")(
    lambda g: g.op("Upsample", [g.y, g.c([1, 1, 2, 2])], mode="nearest")
)
case("Upsample opset17", op="Upsample", note="deprecated op in an opset 17 model")(
    lambda g: g.op("Upsample", [g.y, g.c([1, 1, 2, 2])], mode="nearest")
)
case("ConvTranspose", note="W_t [4,2,2,2] frozen, stride 2")(
    lambda g: g.op("ConvTranspose", [g.y, g.param("Wt", (4, 2, 2, 2), 0.3)], strides=[2, 2])
)
case(
    "ConvTranspose trainable",
    op="ConvTranspose",
    grad=("Wt", "Bt"),
    note="W_t [4,2,3,3] + bias trainable, k3 s2 p1 output_padding 1",
)(
    lambda g: g.op(
        "ConvTranspose",
        [g.y, g.param("Wt", (4, 2, 3, 3), 0.3), g.param("Bt", (2,))],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )
)
case(
    "ConvTranspose k4s2p1 group2",
    op="ConvTranspose",
    grad=("Wg",),
    note="W_t [4,3,4,4] trainable, k4 s2 p1, group 2",
)(
    lambda g: g.op(
        "ConvTranspose",
        [g.y, g.param("Wg", (4, 3, 4, 4), 0.2)],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        group=2,
    )
)
case(
    "ConvTranspose k3s1 dilation2",
    op="ConvTranspose",
    grad=("Wd",),
    note="W_t [4,2,3,3] trainable, k3 s1 p2 dilation 2",
)(
    lambda g: g.op(
        "ConvTranspose",
        [g.y, g.param("Wd", (4, 2, 3, 3), 0.3)],
        pads=[2, 2, 2, 2],
        dilations=[2, 2],
    )
)
case("DepthToSpace", note="blocksize 2, DCR")(lambda g: g.op("DepthToSpace", [g.y], blocksize=2))
case("DepthToSpace CRD", op="DepthToSpace", note="blocksize 2, CRD")(
    lambda g: g.op("DepthToSpace", [g.y], blocksize=2, mode="CRD")
)
case("SpaceToDepth", note="blocksize 2")(lambda g: g.op("SpaceToDepth", [g.y], blocksize=2))

# ---- shape / data movement ----------------------------------------------------------------
case("Pad", note="constant, pads input")(
    lambda g: g.op("Pad", [g.y, g.i64([0, 0, 1, 2, 0, 0, 2, 1])])
)
case("Pad reflect", op="Pad", note="mode=reflect")(
    lambda g: g.op("Pad", [g.y, g.i64([0, 0, 1, 1, 0, 0, 1, 1])], mode="reflect")
)
case("Pad edge", op="Pad", note="mode=edge")(
    lambda g: g.op("Pad", [g.y, g.i64([0, 0, 2, 1, 0, 0, 1, 2])], mode="edge")
)
case("Pad wrap", op="Pad", opset=19, note="opset 19, mode=wrap")(
    lambda g: g.op("Pad", [g.y, g.i64([0, 0, 2, 1, 0, 0, 1, 3])], mode="wrap")
)
case("Concat", note="Concat(y, 0.5*y, axis=1)")(
    lambda g: g.op("Concat", [g.y, g.op("Mul", [g.y, g.c(0.5)])], axis=1)
)
case("Split", note="split input [1,3] axis 1; out = Concat(b, a)")(
    lambda g: g.op("Concat", g.op("Split", [g.y, g.i64([1, 3])], outs=2, axis=1)[::-1], axis=1)
)
case("Split one output used", op="Split", note="split [1,3]; only output 0 is used")(
    lambda g: g.op("Split", [g.y, g.i64([1, 3])], outs=2, axis=1)[0]
)
case("Split last output used", op="Split", note="split [1,3]; only output 1 is used")(
    lambda g: g.op("Split", [g.y, g.i64([1, 3])], outs=2, axis=1)[1]
)
case(
    "Split opset11 one output used",
    op="Split",
    opset=11,
    note="opset 11, split attr [1,3]; only output 0 used",
)(lambda g: g.op("Split", [g.y], outs=2, axis=1, split=[1, 3])[0])
case("Slice one channel", op="Slice", note="channel 1:2 (the same values as Split output)")(
    lambda g: g.op("Slice", [g.y, g.i64([1]), g.i64([2]), g.i64([1])])
)
case("Slice", note="starts/ends/axes/steps inputs, step 2")(
    lambda g: g.op("Slice", [g.y, g.i64([0, 1]), g.i64([3, 8]), g.i64([1, 2]), g.i64([1, 2])])
)
case("Slice flip", op="Slice", note="step -1 on axis 3 (flip)")(
    lambda g: g.op("Slice", [g.y, g.i64([-1]), g.i64([-(2**63)]), g.i64([3]), g.i64([-1])])
)
case("Slice flip -9", op="Slice", note="step -1 on axis 3, end -9 instead of INT64_MIN")(
    lambda g: g.op("Slice", [g.y, g.i64([-1]), g.i64([-9]), g.i64([3]), g.i64([-1])])
)
case("Slice step -2", op="Slice", note="step -2 on axis 3, start 7, end -9")(
    lambda g: g.op("Slice", [g.y, g.i64([7]), g.i64([-9]), g.i64([3]), g.i64([-2])])
)
case("Transpose", note="perm [0,2,3,1]")(lambda g: g.op("Transpose", [g.y], perm=[0, 2, 3, 1]))
case("Reshape", note="to [2,4,64]")(lambda g: g.op("Reshape", [g.y, g.i64([2, 4, 64])]))
case("Flatten", note="axis 1")(lambda g: g.op("Flatten", [g.y], axis=1))
case("Unsqueeze", note="axes input [1]")(lambda g: g.op("Unsqueeze", [g.y, g.i64([1])]))
case("Squeeze", note="GlobalAveragePool then Squeeze axes [2,3]")(
    lambda g: g.op("Squeeze", [g.op("GlobalAveragePool", [g.y]), g.i64([2, 3])])
)
case("Expand", note="to [3,2,4,8,8]")(lambda g: g.op("Expand", [g.y, g.i64([3, 2, 4, 8, 8])]))
case("Tile", note="repeats [1,1,2,2]")(lambda g: g.op("Tile", [g.y, g.i64([1, 1, 2, 2])]))
case("Gather", note="axis 1, indices [0,2]")(lambda g: g.op("Gather", [g.y, g.i64([0, 2])], axis=1))
case("Gather scalar", op="Gather", note="axis 1, scalar index 1")(
    lambda g: g.op("Gather", [g.y, g.i64(1)], axis=1)
)
case("Shape", note="torch-style flatten: Reshape(y, Concat(Shape(y)[0:1], [-1]))")(
    lambda g: g.op(
        "Reshape",
        [g.y, g.op("Concat", [g.op("Shape", [g.y], start=0, end=1), g.i64([-1])], axis=0)],
    )
)
case("Einsum", note="'nchw,dc->ndhw' with const [5,4]")(
    lambda g: g.op("Einsum", [g.y, g.param("E", (5, 4))], equation="nchw,dc->ndhw")
)

# ---- less common ops found in older / detection CNNs ----------------------------------------
case("LRN", note="size 5, alpha 1e-4, beta 0.75, bias 1 (AlexNet/GoogLeNet)")(
    lambda g: g.op("LRN", [g.y], size=5, alpha=1e-4, beta=0.75, bias=1.0)
)
case("ReduceMin", note="opset 17, axes attr [2,3]")(lambda g: g.op("ReduceMin", [g.y], axes=[2, 3]))
case("ReduceSumSquare", note="opset 17, axes attr [2,3]")(
    lambda g: g.op("ReduceSumSquare", [g.y], axes=[2, 3])
)
case("ReduceL1", note="opset 17, axes attr [2,3]")(lambda g: g.op("ReduceL1", [g.y], axes=[2, 3]))
case("ReduceLogSumExp", note="opset 17, axes attr [1]")(
    lambda g: g.op("ReduceLogSumExp", [g.y], axes=[1])
)
case("ThresholdedRelu", note="alpha 0.5")(lambda g: g.op("ThresholdedRelu", [g.y], alpha=0.5))
case("Sin")(lambda g: g.op("Sin", [g.y]))
case("Cos")(lambda g: g.op("Cos", [g.y]))
for _op in ["Floor", "Ceil", "Round", "Sign"]:
    case(_op, note="y + Op(y) (piecewise constant)")(
        lambda g, _op=_op: g.op("Add", [g.y, g.op(_op, [g.y])])
    )
case("TopK", note="K 2 on axis 1, values")(
    lambda g: g.op("TopK", [g.y, g.i64([2])], outs=2, axis=1)[0]
)
case("GatherElements", note="axis 1, indices const [2,1,8,8]")(
    lambda g: g.op(
        "GatherElements",
        [g.y, g.i64(np.random.default_rng(3).integers(0, 4, (2, 1, 8, 8)))],
        axis=1,
    )
)
case("CumSum", note="axis 1")(lambda g: g.op("CumSum", [g.y, g.i64(1)]))

# ---- dense --------------------------------------------------------------------------------
case("Gemm", grad=("Bg", "Cg"), note="Flatten -> Gemm(B [10,256] transB=1, C [10]) trainable")(
    lambda g: g.op(
        "Gemm",
        [g.op("Flatten", [g.y], axis=1), g.param("Bg", (10, 256), 0.05), g.param("Cg", (10,))],
        transB=1,
    )
)
case("MatMul", grad=("Bm",), note="Reshape [2,4,64] @ B [64,5] trainable")(
    lambda g: g.op(
        "MatMul", [g.op("Reshape", [g.y, g.i64([2, 4, 64])]), g.param("Bm", (64, 5), 0.1)]
    )
)

# ---- normalization / dropout --------------------------------------------------------------


def _bn(g: G):
    return g.op(
        "BatchNormalization",
        [
            g.y,
            g.param("bn_s", (4,), low=0.5, high=1.5),
            g.param("bn_b", (4,)),
            g.param("bn_m", (4,), 0.2),
            g.param("bn_v", (4,), low=0.5, high=2.0),
        ],
        epsilon=1e-5,
    )


case("BatchNormalization", note="training_mode=0 (inference form), all params frozen")(_bn)
case(
    "BatchNormalization trainable",
    op="BatchNormalization",
    grad=("bn_s", "bn_b"),
    note="scale/bias trainable, mean/var frozen",
)(_bn)


def _inorm(g: G):
    return g.op(
        "InstanceNormalization",
        [g.y, g.param("in_s", (4,), low=0.5, high=1.5), g.param("in_b", (4,))],
    )


case("InstanceNormalization", grad=("in_s", "in_b"), note="scale/bias trainable")(_inorm)


def _lnorm(g: G):
    return g.op(
        "LayerNormalization",
        [g.y, g.param("ln_s", (8,), low=0.5, high=1.5), g.param("ln_b", (8,))],
        axis=-1,
    )


case("LayerNormalization", grad=("ln_s", "ln_b"), note="axis -1, scale/bias trainable")(_lnorm)
case(
    "LayerNormalization 3 outputs",
    op="LayerNormalization",
    grad=("ln_s", "ln_b"),
    note="axis -1, optional outputs Mean and InvStdDev declared",
)(
    lambda g: g.op(
        "LayerNormalization",
        [g.y, g.param("ln_s", (8,), low=0.5, high=1.5), g.param("ln_b", (8,))],
        outs=3,
        axis=-1,
    )[0]
)
case(
    "LayerNormalization 3 outputs no bias",
    op="LayerNormalization",
    grad=("ln_s",),
    note="axis -1, 3 outputs, no bias input",
)(
    lambda g: g.op(
        "LayerNormalization", [g.y, g.param("ln_s", (8,), low=0.5, high=1.5)], outs=3, axis=-1
    )[0]
)
case(
    "LayerNormalization axis1 3 outputs",
    op="LayerNormalization",
    grad=("ln1_s", "ln1_b"),
    note="axis 1 (over C,H,W), bias input and 3 outputs, scale/bias trainable",
)(
    lambda g: g.op(
        "LayerNormalization",
        [g.y, g.param("ln1_s", (4, 8, 8), low=0.5, high=1.5), g.param("ln1_b", (4, 8, 8))],
        outs=3,
        axis=1,
    )[0]
)
case(
    "LayerNormalization axis1",
    op="LayerNormalization",
    grad=("ln1_s",),
    note="axis 1 (over C,H,W), scale trainable",
)(
    lambda g: g.op(
        "LayerNormalization", [g.y, g.param("ln1_s", (4, 8, 8), low=0.5, high=1.5)], axis=1
    )
)


def _gnorm(g: G):
    return g.op(
        "GroupNormalization",
        [g.y, g.param("gn_s", (2,), low=0.5, high=1.5), g.param("gn_b", (2,))],
        num_groups=2,
    )


case(
    "GroupNormalization",
    opset=18,
    grad=("gn_s", "gn_b"),
    note="opset 18, num_groups 2, per-group scale/bias trainable",
)(_gnorm)
case(
    "GroupNormalization 21",
    op="GroupNormalization",
    opset=21,
    grad=("gn21_s", "gn21_b"),
    note="opset 21, num_groups 2, per-channel scale/bias trainable",
)(
    lambda g: g.op(
        "GroupNormalization",
        [g.y, g.param("gn21_s", (4,), low=0.5, high=1.5), g.param("gn21_b", (4,))],
        num_groups=2,
    )
)
case("Dropout", note="ratio 0.2, no training_mode input (as exported)")(
    lambda g: g.op("Dropout", [g.y, g.c(0.2)])
)
case("Dropout mask", op="Dropout", note="ratio 0.2, optional mask output declared")(
    lambda g: g.op("Dropout", [g.y, g.c(0.2)], outs=2)[0]
)
case("Dropout mask ratio 0.5", op="Dropout", note="ratio 0.5, mask output declared")(
    lambda g: g.op("Dropout", [g.y, g.c(0.5)], outs=2)[0]
)


# ---- recurrent ----------------------------------------------------------------------------


def _seq(g: G) -> str:
    """[2,4,8,8] -> [seq 8, batch 2, input 32]."""
    return g.op("Transpose", [g.op("Reshape", [g.y, g.i64([2, 32, 8])])], perm=[2, 0, 1])


def _rnn(
    op: str, direction: str, lbr: int = 0, use: str = "Y", n_in: int = 4, states: bool = False
):
    """An LSTM/GRU/RNN on _seq(y). ``n_in``: pad the input list with '' to this length;
    ``states``: pass zero initial_h (and initial_c) constants the way torch exports them."""
    nd = 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    hid = 5

    def build(g: G):
        p = op.lower()
        w = g.param(f"{p}_W", (nd, gates * hid, 32), 0.2)
        r = g.param(f"{p}_R", (nd, gates * hid, hid), 0.2)
        b = g.param(f"{p}_B", (nd, 2 * gates * hid), 0.1)
        ins = [_seq(g), w, r, b]
        if states:
            ins += ["", g.c(np.zeros((nd, 2, hid)))]
            if op == "LSTM":
                ins.append(g.c(np.zeros((nd, 2, hid))))
        ins += [""] * (n_in - len(ins))
        attrs = {"hidden_size": hid, "direction": direction}
        if op == "GRU":
            attrs["linear_before_reset"] = lbr
        outs = g.op(op, ins, outs=3 if op == "LSTM" else 2, **attrs)
        return outs[0] if use == "Y" else outs[1]

    return build


case("LSTM forward", op="LSTM", note="inputs [X,W,R,B] only (4 inputs), Y used")(
    _rnn("LSTM", "forward")
)
_T7 = "7 inputs [X,W,R,B,'',h0,c0] (torch export)"
for _d in ["forward", "reverse", "bidirectional"]:
    case(f"LSTM {_d} torch", op="LSTM", note=f"direction={_d}, {_T7}, weights frozen")(
        _rnn("LSTM", _d, n_in=7, states=True)
    )
case("LSTM forward 8 inputs", op="LSTM", note="inputs padded with '' to 8, no initial states")(
    _rnn("LSTM", "forward", n_in=8)
)
case(
    "LSTM forward trainable",
    op="LSTM",
    grad=("lstm_W", "lstm_R", "lstm_B"),
    note=f"forward, {_T7}, W/R/B trainable",
)(_rnn("LSTM", "forward", n_in=7, states=True))
for _sub in [("lstm_W",), ("lstm_R",), ("lstm_B",), ("lstm_W", "lstm_R")]:
    case(
        f"LSTM forward trainable {'+'.join(x[5:] for x in _sub)}",
        op="LSTM",
        grad=_sub,
        note=f"forward, {_T7}, only {'/'.join(x[5:] for x in _sub)} trainable",
    )(_rnn("LSTM", "forward", n_in=7, states=True))
case(
    "LSTM forward 8 inputs trainable",
    op="LSTM",
    grad=("lstm_W", "lstm_R", "lstm_B"),
    note="inputs padded with '' to 8, no initial states, W/R/B trainable",
)(_rnn("LSTM", "forward", n_in=8))
case(
    "LSTM forward 4 inputs trainable",
    op="LSTM",
    grad=("lstm_W", "lstm_R", "lstm_B"),
    note="inputs [X,W,R,B] only, W/R/B trainable",
)(_rnn("LSTM", "forward"))
case(
    "LSTM forward Y_h trainable",
    op="LSTM",
    grad=("lstm_W", "lstm_R", "lstm_B"),
    note=f"forward, {_T7}, only Y_h used, W/R/B trainable",
)(_rnn("LSTM", "forward", use="Y_h", n_in=7, states=True))
case("LSTM forward Y_h", op="LSTM", note=f"forward, {_T7}, only Y_h used")(
    _rnn("LSTM", "forward", use="Y_h", n_in=7, states=True)
)
for _d in ["reverse", "bidirectional"]:
    case(
        f"LSTM {_d} torch trainable",
        op="LSTM",
        grad=("lstm_W", "lstm_R", "lstm_B"),
        note=f"direction={_d}, {_T7}, W/R/B trainable",
    )(_rnn("LSTM", _d, n_in=7, states=True))
case("GRU forward", op="GRU", note="inputs [X,W,R,B] only, linear_before_reset=0")(
    _rnn("GRU", "forward")
)
_T6 = "6 inputs [X,W,R,B,'',h0] (torch export)"
case("GRU forward torch", op="GRU", note=f"{_T6}, linear_before_reset=0")(
    _rnn("GRU", "forward", n_in=6, states=True)
)
case("GRU forward torch lbr1", op="GRU", note=f"{_T6}, linear_before_reset=1 (torch)")(
    _rnn("GRU", "forward", lbr=1, n_in=6, states=True)
)
_GT = ("gru_W", "gru_R", "gru_B")
case(
    "GRU forward torch trainable",
    op="GRU",
    grad=_GT,
    note=f"{_T6}, linear_before_reset=0, W/R/B trainable",
)(_rnn("GRU", "forward", n_in=6, states=True))
case(
    "GRU forward torch lbr1 trainable W+R",
    op="GRU",
    grad=_GT[:2],
    note=f"{_T6}, linear_before_reset=1, only W/R trainable",
)(_rnn("GRU", "forward", lbr=1, n_in=6, states=True))
case(
    "GRU forward torch lbr1 trainable B",
    op="GRU",
    grad=_GT[2:],
    note=f"{_T6}, linear_before_reset=1, only B trainable",
)(_rnn("GRU", "forward", lbr=1, n_in=6, states=True))
case(
    "GRU forward torch lbr1 trainable",
    op="GRU",
    grad=_GT,
    note=f"{_T6}, linear_before_reset=1, W/R/B trainable",
)(_rnn("GRU", "forward", lbr=1, n_in=6, states=True))
case("GRU reverse torch", op="GRU", note=f"direction=reverse, {_T6}")(
    _rnn("GRU", "reverse", n_in=6, states=True)
)
case("GRU bidirectional torch", op="GRU", note=f"direction=bidirectional, {_T6}")(
    _rnn("GRU", "bidirectional", n_in=6, states=True)
)
case(
    "GRU bidirectional torch trainable",
    op="GRU",
    grad=("gru_W", "gru_R", "gru_B"),
    note=f"direction=bidirectional, {_T6}, lbr=1, W/R/B trainable",
)(_rnn("GRU", "bidirectional", lbr=1, n_in=6, states=True))
case("RNN forward", op="RNN", note="vanilla RNN, tanh")(_rnn("RNN", "forward", n_in=6, states=True))


# --------------------------------------------------------------------------------------------
# Rewrite cases: every op case whose op onnxfix rewrites, through onnxfix's own rewrite
# --------------------------------------------------------------------------------------------

for _name, _c in list(CASES.items()):
    if _c.op in REWRITTEN_OPS:
        CASES[REWRITE_PREFIX + _name] = Case(
            name=REWRITE_PREFIX + _name,
            op=_c.op,
            build=_c.build,
            opset=_c.opset,
            grad=_c.grad,
            kind="rewrite",
            ref=_name,
        )


def build(c: Case, conv: bool = True):
    """(model, trainable parameters, rewrites) of a case.

    For a rewrite case the op case's model is rewritten in place by onnxfix's
    ``rewrite_for_training``, with every initializer but the trainable ones frozen (the
    probe's constants are initializers too); ``rewrites`` is its list of Rewrite records, and
    the trainable parameters include those the rewrites added. For an op case it is None.
    """
    g = G(opset=c.opset, conv=conv)
    model = g.model(c.build(g))
    trainable = [g.upstream, *c.grad]
    if c.kind != "rewrite":
        return model, trainable, None
    frozen = {t.name for t in model.graph.initializer} - set(trainable)
    done = rewrite_for_training(model, frozen=frozen)
    return model, trainable + [p for r in done for p in r.parameters], done


def probed_node(c: Case) -> dict:
    """The op case's first node of type ``c.op``, as JSON: op type, domain, input and output
    counts and attributes (what decides whether onnxfix thinks a gradient flows)."""
    from onnx import helper

    model, _, _ = build(c)
    node = next(n for n in model.graph.node if n.op_type == c.op)
    attributes = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        attributes[a.name] = value
    return {
        "name": node.name,
        "op_type": node.op_type,
        "domain": node.domain,
        "inputs": len(node.input),
        "outputs": len(node.output),
        "attributes": attributes,
    }


# --------------------------------------------------------------------------------------------
# Worker (runs in a subprocess)
# --------------------------------------------------------------------------------------------


def _stage(name: str) -> None:
    print(STAGE_MARK + name, flush=True)


def _session(model):
    """A quiet CPU InferenceSession on one thread, so that reductions add up in the same order
    in every run (the results file is compared run to run)."""
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def _generate(model, requires_grad, frozen, folder: str) -> None:
    """generate_artifacts (MSELoss, AdamW) into ``folder``, lowered to the IR version ORT
    loads; ORT's training modules are imported the way onnxfix imports them."""
    import onnx
    import onnxruntime

    from onnxfix.training.ort import ORT_MAX_IR_VERSION, onnxblock

    onnxblock()
    from onnxruntime.training import artifacts

    onnxruntime.set_default_logger_severity(3)
    artifacts.generate_artifacts(
        model,
        requires_grad=list(requires_grad),
        frozen_params=list(frozen),
        loss=artifacts.LossType.MSELoss,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=folder,
    )
    for f in sorted(os.listdir(folder)):
        if f.endswith(".onnx"):
            m = onnx.load(os.path.join(folder, f))
            if m.ir_version > ORT_MAX_IR_VERSION:
                m.ir_version = ORT_MAX_IR_VERSION
                onnx.save(m, os.path.join(folder, f))


def _load(folder: str):
    """(CheckpointState, Module, Optimizer) of the artifacts in ``folder``."""
    from onnxfix.training.ort import training_api

    api = training_api()
    state = api.CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
    module = api.Module(
        os.path.join(folder, "training_model.onnx"), state, os.path.join(folder, "eval_model.onnx")
    )
    return state, module, api.Optimizer(os.path.join(folder, "optimizer_model.onnx"), module)


def _params_as_inputs(model, names):
    """A copy of ``model`` whose initializers ``names`` are graph inputs (for FD)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep, values = [], {}
    for init in m.graph.initializer:
        if init.name in names:
            values[init.name] = onnx.numpy_helper.to_array(init)
            m.graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
        else:
            keep.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m, values


def _training_graph_facts(c: Case, folder: str) -> dict:
    """Which gradient ops ORT built for the probed op's node(s), and which op types the probed
    node became in the training graph (ORT replaces some before building gradients)."""
    import onnx

    train_m = onnx.load(os.path.join(folder, "training_model.onnx"))
    # gradient nodes are named "<forward node>_Grad/..."; the Conv's (n1_Conv) and the
    # output Identity's are the same in every case
    facts = {
        "grad_ops": sorted(
            {
                n.op_type
                for n in train_m.graph.node
                if "_Grad/" in n.name
                and re.match(r"n\d+_", n.name)
                and not n.name.startswith("n1_Conv_Grad")
            }
        )
    }
    if c.kind == "op":
        probed = probed_node(c)["name"]
        facts["trained_as"] = sorted(
            {
                n.op_type
                for n in train_m.graph.node
                if "_Grad/" not in n.name and (n.name == probed or n.name.startswith(probed + "_"))
            }
        )
    return facts


def worker(name: str) -> dict:
    c = CASES[name]
    res: dict = {"case": name, "stage": "rewrite" if c.kind == "rewrite" else "build"}
    rng = np.random.default_rng(1234)
    _stage(res["stage"])
    try:
        model, grad_names, done = build(c)
    except Exception as e:  # noqa: BLE001 - a rewrite that raises is a result
        res.update(status="error", error=f"{type(e).__name__}: {e}")
        return res
    if done is not None:
        res["rewrites"] = [
            {"op": r.op, "description": r.description, "exact": r.exact} for r in done
        ]
        if not done:
            res["status"] = "not_rewritten"
            return res
    res["trainable"] = grad_names
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)

    _stage("forward")
    res["stage"] = "forward"
    from onnx import TensorProto, helper

    try:
        y = _session(model).run(None, {"X": x})[0]
    except Exception as e:  # noqa: BLE001 - recorded as the result
        res.update(status="error", error=str(e))
        return res
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", TensorProto.FLOAT, list(y.shape))
    )
    target = rng.standard_normal(y.shape).astype(np.float32)

    tmp = tempfile.mkdtemp(prefix="ortprobe_")
    try:
        _stage("generate")
        res["stage"] = "generate"
        try:
            _generate(model, grad_names, [], tmp)
        except Exception as e:  # noqa: BLE001
            res.update(status="error", error=f"{type(e).__name__}: {e}")
            return res
        res.update(_training_graph_facts(c, tmp))

        _stage("load")
        res["stage"] = "load"
        try:
            state, module, opt = _load(tmp)
        except Exception as e:  # noqa: BLE001
            res.update(status="error", error=f"{type(e).__name__}: {e}")
            return res

        _stage("train_step")
        res["stage"] = "train_step"
        try:
            module.train()
            loss = float(module(x, target))
            grads = {p: np.array(state.parameters[p].grad) for p in grad_names}
        except Exception as e:  # noqa: BLE001
            res.update(status="error", error=f"{type(e).__name__}: {e}")
            return res
        res["train_loss"] = loss

        _stage("optimizer_step")
        res["stage"] = "optimizer_step"
        try:
            opt.step()
            module.lazy_reset_grad()
            module.eval()
            module(x, target)
        except Exception as e:  # noqa: BLE001
            res.update(status="error", error=f"{type(e).__name__}: {e}")
            return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    _stage("gradcheck")
    res["stage"] = "gradcheck"
    res["status"] = "ok"
    reference = build(CASES[c.ref])[0] if c.ref else build(c)[0]
    ref_model, values = _params_as_inputs(reference, grad_names)
    sess = _session(ref_model)

    def loss_at(vals) -> float:
        out = sess.run(None, {"X": x, **vals})[0].astype(np.float64)
        return float(np.mean((out - target.astype(np.float64)) ** 2))

    res["infer_loss"] = loss_at(values)
    rels = {}
    drng = np.random.default_rng(99)
    for p in grad_names:
        if p not in values:  # a parameter the rewrite added (a zero gate): its gradient is 0
            rels[p] = 0.0 if not np.any(grads[p]) else float("inf")
            continue
        g64 = grads[p].astype(np.float64)
        gnorm = float(np.linalg.norm(g64))
        rnd = drng.standard_normal(values[p].shape)
        dirs = [rnd / np.linalg.norm(rnd)]
        if gnorm > 0:
            dirs.insert(0, g64 / gnorm)  # along the gradient: catches a wrong scale
        worst = 0.0
        for d in dirs:
            analytic = float(np.sum(g64 * d))
            errs = []
            for eps in (1e-2, 3e-3, 1e-3):  # the best step: FD has truncation and rounding error
                plus = dict(values)
                minus = dict(values)
                plus[p] = (values[p] + eps * d).astype(np.float32)
                minus[p] = (values[p] - eps * d).astype(np.float32)
                fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
                errs.append(abs(fd - analytic) / max(gnorm, abs(fd), 1e-12))
            worst = max(worst, min(errs))
        rels[p] = worst
    res["grad_rel_err"] = rels
    res["stage"] = "done"
    return res


# --------------------------------------------------------------------------------------------
# Equivalence of a rewrite with the original op (InferenceSession, random + special inputs)
# --------------------------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1.0, -1.0, 2.5, -2.5, 3.0, -3.0]
SPECIAL += [2.9999998, -2.9999998, 3.0000002, -3.0000002, 6.0, -6.0, 10.0, -10.0, 50.0, -50.0]
SPECIAL += [88.0, -88.0, 100.0, -100.0, 1e4, -1e4]


def _ordered(a: np.ndarray) -> np.ndarray:
    """float32 values mapped to integers in the same order, one apart per ulp."""
    i = a.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def equiv(name: str) -> dict:
    c = CASES[name]
    assert c.ref is not None, f"{name} is not a rewrite case"
    original = build(CASES[c.ref], conv=False)[0]
    rewritten, _, done = build(c, conv=False)
    if not done:
        return {"case": name, "equiv": "not rewritten"}
    s_orig, s_new = _session(original), _session(rewritten)
    rng = np.random.default_rng(7)
    inputs = []
    n = 2 * 4 * 8 * 8
    sp = np.array(SPECIAL, np.float32)
    inputs.append(rng.permutation(np.concatenate([sp, rng.standard_normal(n - sp.size) * 4])))
    for scale in (0.5, 2.0, 4.0, 10.0):
        inputs.append(rng.standard_normal(n) * scale)
    bitwise = True
    value_exact = True
    max_ulp = 0
    max_abs = 0.0
    max_rel = 0.0
    max_scaled = 0.0
    for arr in inputs:
        x = arr.reshape(2, 4, 8, 8).astype(np.float32)
        a = s_orig.run(None, {"X": x})[0]
        b = s_new.run(None, {"X": x})[0]
        if a.shape != b.shape:
            return {"case": name, "equiv": f"shape differs {a.shape} vs {b.shape}"}
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if (nan_a != nan_b).any():
            return {"case": name, "equiv": "NaN pattern differs"}
        a2, b2 = np.where(nan_a, 0, a), np.where(nan_b, 0, b)
        if not np.array_equal(a2.view(np.int32), b2.view(np.int32)):
            bitwise = False
        if not np.array_equal(a2, b2):
            value_exact = False
        max_ulp = max(max_ulp, int(np.max(np.abs(_ordered(a2) - _ordered(b2)))))
        diff = np.abs(a2.astype(np.float64) - b2.astype(np.float64))
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(a2), 1e-30)).max()))
        max_scaled = max(max_scaled, float(diff.max() / max(float(np.abs(a2).max()), 1e-30)))
    if bitwise:
        verdict = "bitwise identical"
    elif value_exact:
        verdict = "equal values (only the sign of zero differs)"
    else:
        verdict = (
            f"max {max_ulp} ulp; max abs err {max_abs:.2g} = {max_scaled:.2g} of "
            f"max|y| (elementwise max rel {max_rel:.2g})"
        )
    return {
        "case": name,
        "equiv": verdict,
        "bitwise": bitwise,
        "value_exact": value_exact,
        "max_ulp": max_ulp,
        "max_abs": max_abs,
        "max_scaled": max_scaled,
        "max_rel": max_rel,
    }


# --------------------------------------------------------------------------------------------
# Special checks (each also runs in a subprocess)
# --------------------------------------------------------------------------------------------


def _train_once(model, requires_grad, frozen, feeds):
    """Artifacts + one train step; returns (state, module, optimizer, loss, tmpdir)."""
    tmp = tempfile.mkdtemp(prefix="ortprobe_")
    _generate(model, requires_grad, frozen, tmp)
    state, module, opt = _load(tmp)
    module.train()
    loss = float(module(*feeds))
    return state, module, opt, loss, tmp


def special_gelu_tanh() -> dict:
    """Which derivative does ORT train ONNX Gelu(approximate='tanh') with?"""
    from math import erf, pi, sqrt

    from onnx import TensorProto, helper

    out: dict = {}
    p = np.linspace(-4, 4, 256, dtype=np.float32).reshape(1, 4, 8, 8)
    pd = p.astype(np.float64)
    d_erf = 0.5 * (1 + np.vectorize(erf)(pd / sqrt(2))) + pd * np.exp(-pd * pd / 2) / sqrt(2 * pi)
    k = sqrt(2 / pi)
    u = k * (pd + 0.044715 * pd**3)
    d_tanh = 0.5 * (1 + np.tanh(u)) + 0.5 * pd * (1 - np.tanh(u) ** 2) * k * (
        1 + 3 * 0.044715 * pd**2
    )
    for approx in ("none", "tanh"):
        g = G(opset=20, conv=None)  # X + P -> Gelu: P's gradient is Gelu's derivative
        g.x_shape = (1, 4, 8, 8)
        g.init("P", p)
        y = g.op("Gelu", [g.op("Add", ["X", "P"])], approximate=approx)
        model = g.model(y)
        model.graph.output[0].CopyFrom(
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])
        )
        fwd = _session(model).run(None, {"X": np.zeros_like(p)})[0]
        target = fwd - 1.0  # so dLoss/dout = 2*(out-target)/N = 2/N everywhere
        state, _, _, _, tmp = _train_once(model, ["P"], [], (np.zeros_like(p), target))
        deriv = np.array(state.parameters["P"].grad, np.float64) * p.size / 2.0
        shutil.rmtree(tmp, ignore_errors=True)
        out[approx] = {
            "max_abs_diff_to_erf_derivative": float(np.abs(deriv - d_erf).max()),
            "max_abs_diff_to_tanh_derivative": float(np.abs(deriv - d_tanh).max()),
        }
    # float32 gradients of the right formula are within ~2e-7 of it
    out["gradient_ok"] = out["tanh"]["max_abs_diff_to_tanh_derivative"] < 1e-5
    return out


def special_batchnorm() -> dict:
    """What a train step does with BatchNormalization (inference form) and its statistics."""
    from onnx import TensorProto, helper

    g = G()
    y = _bn(g)
    model = g.model(y)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    fwd = _session(model).run(None, {"X": x})[0]
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", TensorProto.FLOAT, list(fwd.shape))
    )
    target = rng.standard_normal(fwd.shape).astype(np.float32)
    # the conv output, to recompute BN with batch statistics in numpy
    gc = G()
    conv = _session(gc.model(gc.y)).run(None, {"X": x})[0].astype(np.float64)
    mu = conv.mean(axis=(0, 2, 3), keepdims=True)
    var = conv.var(axis=(0, 2, 3), keepdims=True)
    sc = G.draw("bn_s", (4,), low=0.5, high=1.5).reshape(1, 4, 1, 1)
    bi = G.draw("bn_b", (4,)).reshape(1, 4, 1, 1)
    batch = (conv - mu) / np.sqrt(var + 1e-5) * sc + bi
    loss_batch = float(np.mean((batch - target) ** 2))
    loss_infer = float(np.mean((fwd.astype(np.float64) - target) ** 2))
    m0 = G.draw("bn_m", (4,), 0.2)
    v0 = G.draw("bn_v", (4,), low=0.5, high=2.0)
    state, module, opt, loss, tmp = _train_once(model, ["W"], ["bn_m", "bn_v"], (x, target))
    m1 = np.array(state.parameters["bn_m"].data, np.float64).reshape(1, 4, 1, 1)
    v1 = np.array(state.parameters["bn_v"].data, np.float64).reshape(1, 4, 1, 1)
    n = conv.size / 4
    fits = {}
    for mom in (0.9, 0.1):
        for unbiased in (False, True):
            vb = var * n / (n - 1) if unbiased else var
            pm = mom * m0.reshape(1, 4, 1, 1) + (1 - mom) * mu
            pv = mom * v0.reshape(1, 4, 1, 1) + (1 - mom) * vb
            fits[f"momentum {mom}, {'unbiased' if unbiased else 'biased'} var"] = float(
                max(np.abs(pm - m1).max(), np.abs(pv - v1).max())
            )
    module.eval()
    eval_loss = float(module(x, target))
    ev = (conv - m1) / np.sqrt(v1 + 1e-5) * sc + bi
    loss_eval_numpy = float(np.mean((ev - target) ** 2))
    shutil.rmtree(tmp, ignore_errors=True)
    best = min(fits, key=lambda k: fits[k])
    return {
        "train_step_loss": loss,
        "numpy_loss_with_batch_statistics": loss_batch,
        "inference_loss_with_running_statistics": loss_infer,
        "running_stats_in_checkpoint_changed_by_train_step": bool(
            not np.array_equal(m0, m1.ravel().astype(np.float32))
        ),
        "running_stats_update_rule": f"{best} (max abs err {fits[best]:.2g})",
        "eval_step_loss": eval_loss,
        "numpy_loss_with_updated_running_statistics": loss_eval_numpy,
    }


def special_zero_gate() -> dict:
    """Does the zero gate onnxfix adds for a frozen LSTM's W and R stay exactly 0?"""
    from onnx import TensorProto, helper

    model, trainable, done = build(CASES[REWRITE_PREFIX + "LSTM forward torch"])
    gates = [p for r in done for p in r.parameters]
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    fwd = _session(model).run(None, {"X": x})[0]
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", TensorProto.FLOAT, list(fwd.shape))
    )
    target = rng.standard_normal(fwd.shape).astype(np.float32)
    state, module, opt, _, tmp = _train_once(model, trainable, [], (x, target))
    w0 = np.array(state.parameters["W"].data)
    opt.step()
    for _ in range(4):
        module.lazy_reset_grad()
        module(x, target)
        opt.step()
    z = {p: np.array(state.parameters[p].data).tolist() for p in gates}
    w = np.array(state.parameters["W"].data)
    shutil.rmtree(tmp, ignore_errors=True)
    changed = bool(not np.array_equal(w0, w))
    return {
        "gates_after_5_AdamW_steps": z,
        "conv_W_changed": changed,
        "gradient_ok": bool(gates) and changed and all(v == [0.0] for v in z.values()),
    }


# name -> (check, the case whose gradient verdict it decides when it returns "gradient_ok")
SPECIALS: dict[str, tuple[Callable[[], dict], str]] = {
    "gelu_tanh": (special_gelu_tanh, "Gelu tanh"),
    "batchnorm": (special_batchnorm, "BatchNormalization"),
    "zero_gate": (special_zero_gate, REWRITE_PREFIX + "LSTM forward torch"),
}


def scan_wheel() -> dict:
    """Gradient-builder classes and training kernels compiled into the installed wheel,
    read from the RTTI type names in onnxruntime_pybind11_state*.so (a CPU-only build, so
    every kernel class there is a CPU kernel)."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    assert spec is not None and spec.origin is not None, "onnxruntime is not installed"
    capi = os.path.join(os.path.dirname(spec.origin), "capi")
    so = [f for f in os.listdir(capi) if f.startswith("onnxruntime_pybind11_state")]
    with open(os.path.join(capi, so[0]), "rb") as f:
        data = f.read()
    builders = sorted(
        {m.decode() for m in re.findall(rb"N11onnxruntime8training\d+(Get\w+?Gradient)E", data)}
    )
    kernels = sorted(
        {
            m.decode()
            for m in re.findall(
                rb"N11onnxruntime7contrib\d+([A-Z]\w*?(?:Grad|Training))(?:I|E)", data
            )
        }
    )
    return {"file": so[0], "builders": builders, "grad_kernels": kernels}


# --------------------------------------------------------------------------------------------
# Parent: run workers, classify, write the results and the report
# --------------------------------------------------------------------------------------------


def _skip_signature(msg: str) -> str:
    """Drop ORT's 'file.cc:NN <C++ signature>' prefix from an error message."""
    m = re.search(r"\S+\.(?:cc|h|cpp):\d+ ", msg)
    if not m:
        return msg
    rest = msg[m.end() :]
    start = rest.find("(")
    if start < 0:
        return rest
    depth = 0
    for i in range(start, len(rest)):
        if rest[i] == "(":
            depth += 1
        elif rest[i] == ")":
            depth -= 1
            if depth == 0:
                tail = rest[i + 1 :]
                tail = re.sub(r"^\s*const\b", "", tail)
                tail = re.sub(r"^\s*\[with [^\]]*\]", "", tail)
                return tail.strip()
    return rest


ERROR_PATTERNS = [
    r"The gradient builder has not been registered: \S+",
    r"Could not find an implementation for [A-Za-z]+\(\d+\)",
    r"[A-Za-z ]+kernel only supports the forward direction for now\. Provided direction: \w+",
    r"Unsupported model IR version[^\n]*",
]


def essential(msg: str) -> str:
    """The one line of an error message that says what went wrong."""
    if not msg:
        return ""
    for pat in ERROR_PATTERNS:
        m = re.search(pat, msg)
        if m:
            return m.group(0).strip()
    head = msg.split("\n")[0]
    if "[ONNXRuntimeError] : " in head:
        head = head.split("[ONNXRuntimeError] : ", 1)[1]
    out = _skip_signature(head)
    out = re.sub(r"\s+", " ", out).strip()
    return out[:240]


# Why a case fails, from its error message (first match): the ``why`` of the results file, and
# the report's words for it ({0}: the pattern's group; {stage}: where it failed).
FAILURE_REASONS = [
    ("no_gradient_builder", r"The gradient builder has not been registered", "NO GRADIENT"),
    (
        "no_cpu_gradient_kernel",
        r"Could not find an implementation for (\w+Grad)\(",
        "NO CPU KERNEL ({0})",
    ),
    ("forward_direction_only", r"kernel only supports the forward direction", None),
    ("pad_constant_mode_only", r"Pad gradient currently supports constant mode only", None),
    ("builder_needs_optional_io", r"i < node_->(?:Input|Output)Defs\(\)\.size\(\) was false", None),
    ("invalid_gradient_graph", r"of operator \(\w+Grad\)", None),
    ("slice_grad_narrowing", r"SliceGrad.*narrowing_error", None),
    ("rejected_by_onnx_checker", r"ValidationError", None),
]


def outcome(r: dict) -> dict:
    """A worker's result as ``trains`` (artifacts built and the steps ran), ``gradient_ok``
    (and the gradient and forward were the original model's), ``why`` (None when both hold,
    else a FAILURE_REASONS name or one of crash, timeout, not_runnable, wrong_gradient,
    different_forward, rewrite_raised, other_error) and ``result`` (the report's words).
    A rewrite case whose rewrite changed nothing did not run: ``why`` is 'not_rewritten' and
    ``trains`` and ``gradient_ok`` are None."""
    stage = r.get("stage")
    if r.get("status") == "not_rewritten":
        return {"trains": None, "gradient_ok": None, "why": "not_rewritten", "result": "-"}
    if r.get("crash"):
        return _failed("crash", f"CRASH ({r['crash']}) at {stage}")
    if r.get("timeout"):
        return _failed("timeout", f"TIMEOUT at {stage}")
    if r.get("status") == "ok":
        tl, il = r["train_loss"], r["infer_loss"]
        if abs(tl - il) > 1e-4 * max(1.0, abs(il)):
            text = (
                f"TRAINS A DIFFERENT FORWARD (train-step loss {tl:.5g} vs inference loss {il:.5g})"
            )
            return {
                "trains": True,
                "gradient_ok": False,
                "why": "different_forward",
                "result": text,
            }
        bad = {p: v for p, v in r["grad_rel_err"].items() if not v <= GRAD_TOLERANCE}
        if bad:
            errs = ", ".join(f"{p}: rel err {v:.2g}" for p, v in bad.items())
            text = f"WRONG GRADIENT ({errs})"
            return {"trains": True, "gradient_ok": False, "why": "wrong_gradient", "result": text}
        if r.get("special_gradient_ok") is False:
            text = f"WRONG GRADIENT (special check {r['special']})"
            return {"trains": True, "gradient_ok": False, "why": "wrong_gradient", "result": text}
        return {"trains": True, "gradient_ok": True, "why": None, "result": "OK"}
    if stage == "rewrite":
        return _failed("rewrite_raised", "REWRITE RAISED")
    if stage == "forward":
        return _failed("not_runnable", "FORWARD FAILS")
    err = r.get("error", "")
    for why, pattern, label in FAILURE_REASONS:
        m = re.search(pattern, err)
        if m:
            found = _failed(why, (label or "ERROR at {stage}").format(*m.groups(), stage=stage))
            if why == "no_cpu_gradient_kernel":
                found["kernel"] = m.group(1)
            return found
    return _failed("other_error", f"ERROR at {stage}")


def _failed(why: str, text: str) -> dict:
    return {"trains": False, "gradient_ok": False, "why": why, "result": text}


def run_one(name: str, timeout: float, mode: str = "--worker") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), mode, name]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stages = [ln[len(STAGE_MARK) :] for ln in out.splitlines() if ln.startswith(STAGE_MARK)]
        return {"case": name, "timeout": True, "stage": stages[-1] if stages else "?"}
    res = None
    stages = []
    for ln in p.stdout.splitlines():
        if ln.startswith(RESULT_MARK):
            res = json.loads(ln[len(RESULT_MARK) :])
        elif ln.startswith(STAGE_MARK):
            stages.append(ln[len(STAGE_MARK) :])
    if res is None:
        res = {"case": name, "stage": stages[-1] if stages else "?"}
        if p.returncode < 0:
            try:
                res["crash"] = signal.Signals(-p.returncode).name
            except ValueError:
                res["crash"] = f"signal {-p.returncode}"
        else:
            res["status"] = "error"
            res["crash"] = f"exit code {p.returncode}"
        tail = [ln for ln in p.stderr.splitlines() if ln.strip()][-3:]
        res["error"] = " | ".join(tail)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _select(patterns: list[str] | None) -> list[str]:
    names = list(CASES)
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def _sig(v: float | None) -> float | None:
    """Two significant digits (the results file is diffed run to run); None for inf/NaN."""
    if v is None or not np.isfinite(v):
        return None
    return float(f"{v:.2g}")


def summarize(results: dict, equivs: dict, specials: dict, meta: dict) -> dict:
    """The results file: one entry per case, in the probe's case order."""
    ops: dict[str, dict] = {}
    rewrites: dict[str, dict] = {}
    for name, r in results.items():
        c = CASES[name]
        entry = {"op": c.op, "opset": c.opset}
        if c.kind == "op":
            entry["note"] = c.note
            entry["node"] = probed_node(c)
        else:
            entry["of"] = c.ref
            entry["rewrites"] = r.get("rewrites", [])
        entry["trainable"] = r.get("trainable", ["W", *c.grad])
        entry.update(outcome(r))
        if entry["trains"] is False:
            entry["stage"] = r.get("stage")
            # a killed process leaves only log noise on stderr
            killed = r.get("crash") and not r.get("status")
            entry["error"] = "" if killed else essential(r.get("error", ""))
        if "grad_rel_err" in r:
            entry["grad_rel_err"] = {p: _sig(v) for p, v in r["grad_rel_err"].items()}
        for key in ("grad_ops", "trained_as"):
            if key in r:
                entry[key] = r[key]
        if c.kind == "rewrite" and r.get("rewrites"):
            e = equivs.get(name, {})
            entry["equivalence"] = {
                "verdict": e.get("equiv", e.get("error", "not run")),
                **{k: e[k] for k in ("bitwise", "value_exact", "max_ulp") if k in e},
                **{k: _sig(e[k]) for k in ("max_abs", "max_scaled", "max_rel") if k in e},
            }
        (ops if c.kind == "op" else rewrites)[name] = entry
    return {
        "generated_by": "python tools/probe_ort_gradients.py",
        **meta,
        "ops": ops,
        "rewrites": rewrites,
        "specials": {
            n: {k: v for k, v in r.items() if k not in ("case", "seconds")}
            for n, r in specials.items()
        },
    }


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _errs(entry: dict) -> str:
    return ", ".join(
        "n/a" if v is None else f"{v:.1e}" for v in entry.get("grad_rel_err", {}).values()
    )


def render(data: dict) -> str:
    """The generated block of docs/ort-gradients.md, from the results file's data alone."""
    lines = [
        BEGIN_MARK,
        "",
        f"Generated by `{data['generated_by']}` on {data['date']}: onnxruntime "
        f"{data['onnxruntime']} (CPU), onnx {data['onnx']}, Python {data['python']}, "
        f"{len(data['ops'])} op cases and {len(data['rewrites'])} rewrite cases in "
        f"{data['seconds']:.0f} s. The same run's results, machine-readable, are in "
        "`docs/ort-gradients.json`.",
        "",
        "Result: **OK** = artifacts generated, one train step + optimizer step + eval step ran; "
        "the gradient of every trainable parameter matched a central finite difference of the "
        "original model (directional derivatives along the gradient and along a random "
        f"unit vector; error / |gradient| <= {GRAD_TOLERANCE:g}) "
        "and the training-mode loss equalled the inference loss. **NO GRADIENT** = "
        "generate_artifacts raised (no gradient builder). **NO CPU KERNEL (X)** = artifacts "
        "were written but the training session cannot be created: the gradient op X has no "
        "CPU kernel. **CRASH** = the process died (signal).",
        "",
        "### Ops",
        "",
        "| case | op | opset | trainable | result | essential error / note | grad rel err |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {n: k for k, n in enumerate(data["ops"])}
    op_names = sorted(data["ops"], key=lambda n: (data["ops"][n]["op"].lower(), order[n]))
    for name in op_names:
        e = data["ops"][name]
        note = e["note"] + (f" — `{e['error']}`" if e.get("error") else "")
        errs = _errs(e)
        if e["why"] == "different_forward":
            errs = f"n/a (vs inference forward: {errs})"
        lines.append(
            f"| {name} | {e['op']} | {e['opset']} | {', '.join(e['trainable'])} | "
            f"{_md(e['result'])} | {_md(note)} | {errs} |"
        )
    lines += [
        "",
        "### Rewrites",
        "",
        "Each op case whose op onnxfix rewrites, passed through "
        "`onnxfix.training.rewrites.rewrite_for_training` (every parameter but the trainable "
        "ones frozen) and probed as above; the gradient is checked against a finite difference "
        "of the ORIGINAL op's model. Equivalence: the rewritten model vs the original, one "
        "InferenceSession each, X [2,4,8,8] = random normal at scales 0.5, 2, 4, 10 plus "
        "special values (0, -0, ±1e-30, ±1e-7, ±0.5, ±1, ±2.5, ±3 and its float neighbours, "
        "±6, ±10, ±50, ±88, ±100, ±1e4).",
        "",
        "| case | onnxfix's rewrite | trainable | probe result | grad rel err | equivalence with "
        "the original op |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    left = []
    for e in data["rewrites"].values():
        if e["why"] == "not_rewritten":
            left.append(e["of"])
            continue
        said = "; ".join(r["description"] for r in e["rewrites"])
        result = e["result"] + (f" `{e['error']}`" if e.get("error") else "")
        verdict = e.get("equivalence", {}).get("verdict", "not run")
        lines.append(
            f"| {e['of']} | {_md(said)} | {', '.join(e['trainable'])} | {_md(result)} | "
            f"{_errs(e)} | {_md(verdict)} |"
        )
    lines += [
        "",
        "Left as they are by `rewrite_for_training` (the form trains as it is): "
        + (", ".join(left) if left else "none")
        + ".",
        "",
        "### Special checks",
        "",
    ]
    for n, r in data["specials"].items():
        doc = (SPECIALS[n][0].__doc__ or "").strip().split("\n")[0]
        lines.append(f"- `{n}` ({doc}): `{json.dumps(r)}`")
    wheel = data.get("wheel") or {}
    if wheel:
        lines += [
            "",
            f"### Compiled into the installed wheel ({wheel['file']})",
            "",
            f"Gradient builder classes ({len(wheel['builders'])}): " + ", ".join(wheel["builders"]),
            "",
            f"Training kernel classes named *Grad/*Training ({len(wheel['grad_kernels'])}): "
            + ", ".join(wheel["grad_kernels"]),
        ]
    lines += ["", "### Gradient nodes built for the probed op (cases that got artifacts)", ""]
    for name in op_names + list(data["rewrites"]):
        e = data["ops"].get(name) or data["rewrites"][name]
        if "grad_ops" in e:
            lines.append(f"- {name}: {', '.join(e['grad_ops']) or '(none)'}")
    lines += ["", END_MARK]
    return "\n".join(lines)


def write_doc(path: str, block: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN_MARK not in text or END_MARK not in text:
        raise SystemExit(f"{path} has no {BEGIN_MARK} ... {END_MARK} block to replace")
    pre = text.split(BEGIN_MARK)[0]
    post = text.split(END_MARK, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(pre + block + post)


def run(names: list[str], jobs: int, timeout: float, specials_on: bool) -> dict:
    """Run the cases (and the equivalence and special checks) and return the results file."""
    import onnx
    import onnxruntime

    t0 = time.time()
    # every worker's temporary files go below one directory, removed at the end (a crashed
    # worker cannot clean up after itself)
    run_tmp = tempfile.mkdtemp(prefix="ortprobe_run_")
    os.environ["TMPDIR"] = run_tmp
    tempfile.tempdir = None
    results: dict = {}
    equivs: dict = {}
    specials: dict = {}
    with cf.ThreadPoolExecutor(max_workers=jobs) as ex:
        futs = {ex.submit(run_one, n, timeout): ("w", n) for n in names}
        for n in names:
            if CASES[n].kind == "rewrite":
                futs[ex.submit(run_one, n, timeout, "--equiv")] = ("e", n)
        if specials_on:
            for n, (_, target) in SPECIALS.items():
                if target in names:
                    futs[ex.submit(run_one, n, timeout, "--special")] = ("s", n)
        for fut in cf.as_completed(futs):
            kind, n = futs[fut]
            r = fut.result()
            if kind == "w":
                results[n] = r
                o = outcome(r)
                print(f"{n:45s} {o['result']:45s} {essential(r.get('error', ''))[:80]}", flush=True)
            elif kind == "e":
                equivs[n] = r
                print(f"{n:45s} equivalence: {r.get('equiv', r.get('error', '?'))}", flush=True)
            else:
                specials[n] = r
                print(f"special {n}: {json.dumps(r)}", flush=True)
    shutil.rmtree(run_tmp, ignore_errors=True)
    for n, r in specials.items():
        target = SPECIALS[n][1]
        if "gradient_ok" in r:
            results[target].update(special=n, special_gradient_ok=r["gradient_ok"])
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.time() - t0),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "wheel": scan_wheel(),
    }
    return summarize({n: results[n] for n in names}, equivs, specials, meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="markdown file to update (between the probe markers)")
    ap.add_argument("--json", help="write the results file (JSON)")
    ap.add_argument("--from-json", help="render --out from this results file; run nothing")
    ap.add_argument("--only", action="append", help="case name glob (repeatable)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--equiv", help=argparse.SUPPRESS)
    ap.add_argument("--special", help=argparse.SUPPRESS)
    ap.add_argument("--no-special", action="store_true", help="skip the special checks")
    args = ap.parse_args(argv)

    if args.worker:
        print(RESULT_MARK + json.dumps(worker(args.worker)), flush=True)
        return 0
    if args.equiv:
        print(RESULT_MARK + json.dumps(equiv(args.equiv)), flush=True)
        return 0
    if args.special:
        print(RESULT_MARK + json.dumps(SPECIALS[args.special][0]()), flush=True)
        return 0
    if args.list:
        for n, c in CASES.items():
            print(f"{n:45s} {c.op:20s} opset {c.opset}  {c.note}")
        return 0
    if args.from_json:
        if not args.out:
            ap.error("--from-json needs --out")
        with open(args.from_json, encoding="utf-8") as f:
            write_doc(args.out, render(json.load(f)))
        return 0

    names = _select(args.only)
    data = run(names, args.jobs, args.timeout, not args.no_special)
    print(f"{len(names)} cases in {data['seconds']} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
    if args.out:
        write_doc(args.out, render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

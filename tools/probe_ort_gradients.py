#!/usr/bin/env python
"""Probe which ONNX ops onnxruntime-training 1.19.2 can train through on CPU.

For every case a tiny float32 model ``X -> Conv(W) -> <op> -> out`` (opset 17 unless the op
needs a newer one) goes through ``artifacts.generate_artifacts`` (MSELoss, AdamW,
``requires_grad=[W, ...]``), the written artifacts are lowered to IR 10, and CheckpointState /
Module / Optimizer run one training step and one optimizer step. Each case runs in its own
subprocess (some crash the interpreter) with a timeout.

For cases that train, two further checks run:

* gradient check: the directional derivative of the loss from ORT's gradients, against a
  central finite difference of the same loss computed with an InferenceSession on the
  *reference* forward model (for a rewrite: the original op, so a passing rewrite has the
  original op's true gradient);
* forward parity: the loss of the training step against the inference loss at the same
  parameters (a difference means the training graph computes something else, e.g.
  BatchNormalization switching to batch statistics).

Rewrite cases additionally compare the rewrite against the original op on random and
special inputs with an InferenceSession (bitwise, or the largest difference in float32 ulps).

Usage::

    python tools/probe_ort_gradients.py --out docs/ort-gradients.md   # all cases, update doc
    python tools/probe_ort_gradients.py --only PRelu --only 'rewrite:PRelu*' --json r.json

The generated tables replace the text between ``<!-- probe:begin -->`` and
``<!-- probe:end -->`` in the ``--out`` file (the rest of the file is kept).
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
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

RESULT_MARK = "@@RESULT@@ "
STAGE_MARK = "@@STAGE@@ "
BEGIN_MARK = "<!-- probe:begin -->"
END_MARK = "<!-- probe:end -->"

# --------------------------------------------------------------------------------------------
# Model building
# --------------------------------------------------------------------------------------------


def _np_dtype_to_onnx(arr: np.ndarray) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(arr.dtype)


class G:
    """A tiny graph under construction.

    ``conv=True``: input X [2,3,8,8] -> Conv(W [4,3,3,3], pads 1) -> ``self.y`` [2,4,8,8].
    ``conv=False``: input X [2,4,8,8] is ``self.y`` (used to compare an op with its rewrite).
    Parameters are drawn from an RNG seeded by their name, so the original op and its rewrite
    get identical values.
    """

    def __init__(self, opset: int = 17, conv: bool = True):
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.n = 0
        if conv:
            self.x_shape = (2, 3, 8, 8)
            self.param("W", (4, 3, 3, 3), scale=0.3)
            self.y = self.op("Conv", ["X", "W"], pads=[1, 1, 1, 1])
        else:
            self.x_shape = (2, 4, 8, 8)
            self.y = "X"

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
    def op(self, op_type: str, inputs, outs: int = 1, domain: str = "", **attrs):
        from onnx import helper

        self.n += 1
        names = [f"t{self.n}_{k}" for k in range(outs)]
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), names, name=f"n{self.n}_{op_type}", domain=domain, **attrs
            )
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
    op: str  # the op the case is about (table column)
    build: Callable[[G], str]
    opset: int = 17
    grad: tuple = ()  # trainable op parameters besides the conv weight W
    note: str = ""
    kind: str = "op"  # "op" or "rewrite"
    ref: str | None = None  # rewrite: name of the original-op case
    equiv_note: str = ""
    conv: bool = True
    tags: list = field(default_factory=list)


CASES: dict[str, Case] = {}


def case(name, op=None, **kw):
    def deco(fn):
        CASES[name] = Case(name=name, op=op or name.split(" ")[0], build=fn, **kw)
        return fn

    return deco


def rewrite(name, ref, **kw):
    def deco(fn):
        base = CASES[ref]
        kw.setdefault("grad", base.grad)
        kw.setdefault("opset", base.opset)
        CASES["rewrite:" + name] = Case(
            name="rewrite:" + name, op=base.op, build=fn, kind="rewrite", ref=ref, **kw
        )
        return fn

    return deco


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
    note="opset 20, approximate='tanh'; the FD check cannot see it, but the special check "
    "gelu_tanh shows the gradient used is the erf Gelu's",
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
case("RNN forward", op="RNN", note="vanilla RNN, tanh")(_rnn("RNN", "forward", n_in=6, states=True))


# --------------------------------------------------------------------------------------------
# Rewrites of ops without a (CPU) gradient. Each rewrite's gradient is checked against a
# finite difference of the ORIGINAL op's model, and its output against the original op.
# --------------------------------------------------------------------------------------------


def hardsigmoid_clip(g: G, x: str, alpha: float, beta: float) -> str:
    return g.op(
        "Clip", [g.op("Add", [g.op("Mul", [x, g.c(alpha)]), g.c(beta)]), g.c(0.0), g.c(1.0)]
    )


def hardsigmoid_minmax(g: G, x: str, alpha: float, beta: float) -> str:
    t = g.op("Add", [g.op("Mul", [x, g.c(alpha)]), g.c(beta)])
    return g.op("Max", [g.op("Min", [t, g.c(1.0)]), g.c(0.0)])


rewrite("HardSigmoid clip", "HardSigmoid", equiv_note="Mul(alpha), Add(beta), Clip(0,1)")(
    lambda g: hardsigmoid_clip(g, g.y, 0.2, 0.5)
)
rewrite("HardSigmoid minmax", "HardSigmoid", equiv_note="Mul, Add, Min(1), Max(0)")(
    lambda g: hardsigmoid_minmax(g, g.y, 0.2, 0.5)
)
rewrite("HardSigmoid torch clip", "HardSigmoid torch", equiv_note="as above, alpha 1/6")(
    lambda g: hardsigmoid_clip(g, g.y, 1.0 / 6.0, 0.5)
)
rewrite("HardSwish clip", "HardSwish", equiv_note="x * Clip(x*(1/6) + 0.5, 0, 1)")(
    lambda g: g.op("Mul", [g.y, hardsigmoid_clip(g, g.y, 1.0 / 6.0, 0.5)])
)
rewrite("HardSwish relu6", "HardSwish", equiv_note="x * Clip(x + 3, 0, 6) / 6 (torch formula)")(
    lambda g: g.op(
        "Div",
        [
            g.op("Mul", [g.y, g.op("Clip", [g.op("Add", [g.y, g.c(3.0)]), g.c(0.0), g.c(6.0)])]),
            g.c(6.0),
        ],
    )
)


def _slope(g: G) -> str:
    return g.param("slope", (4, 1, 1), low=-0.5, high=0.5)


rewrite("PRelu where", "PRelu trainable", equiv_note="Where(Greater(x,0), x, Mul(x,slope))")(
    lambda g: g.op("Where", [g.op("Greater", [g.y, g.c(0.0)]), g.y, g.op("Mul", [g.y, _slope(g)])])
)
rewrite("PRelu where-less", "PRelu trainable", equiv_note="Where(Less(x,0), Mul(x,slope), x)")(
    lambda g: g.op("Where", [g.op("Less", [g.y, g.c(0.0)]), g.op("Mul", [g.y, _slope(g)]), g.y])
)
rewrite("PRelu relu", "PRelu trainable", equiv_note="Sub(Relu(x), Mul(slope, Relu(Neg(x))))")(
    lambda g: g.op(
        "Sub", [g.op("Relu", [g.y]), g.op("Mul", [_slope(g), g.op("Relu", [g.op("Neg", [g.y])])])]
    )
)
rewrite("PRelu maxmin", "PRelu trainable", equiv_note="Add(Max(x,0), Mul(slope, Min(x,0)))")(
    lambda g: g.op(
        "Add",
        [g.op("Max", [g.y, g.c(0.0)]), g.op("Mul", [_slope(g), g.op("Min", [g.y, g.c(0.0)])])],
    )
)


# ---- activations: exact decompositions of ORT's CPU functors (activations.h) ---------------


def _softplus(g: G, x: str) -> str:
    """Relu(x) + Log(Exp(-|x|) + 1): ORT's two Softplus branches, with no inf in either."""
    e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])])
    return g.op("Add", [g.op("Relu", [x]), g.op("Log", [g.op("Add", [e, g.c(1.0)])])])


rewrite("Softplus", "Softplus", equiv_note="Add(Relu(x), Log(Add(Exp(Neg(Abs(x))), 1)))")(
    lambda g: _softplus(g, g.y)
)
rewrite("Softsign", "Softsign", equiv_note="Mul(Reciprocal(Add(Abs(x), 1)), x)")(
    lambda g: g.op("Mul", [g.op("Reciprocal", [g.op("Add", [g.op("Abs", [g.y]), g.c(1.0)])]), g.y])
)
rewrite("Elu", "Elu", equiv_note="Where(Less(x,0), Mul(alpha, Sub(Exp(Min(x,0)), 1)), x)")(
    lambda g: g.op(
        "Where",
        [
            g.op("Less", [g.y, g.c(0.0)]),
            g.op(
                "Mul",
                [g.c(1.0), g.op("Sub", [g.op("Exp", [g.op("Min", [g.y, g.c(0.0)])]), g.c(1.0)])],
            ),
            g.y,
        ],
    )
)
_SELU_A, _SELU_G = 1.67326319217681884765625, 1.05070102214813232421875
rewrite(
    "Selu",
    "Selu",
    equiv_note="Mul(gamma, Add(Max(x,0), Min(Mul(alpha, Sub(Exp(Min(x,0)), 1)), 0)))",
)(
    lambda g: g.op(
        "Mul",
        [
            g.c(_SELU_G),
            g.op(
                "Add",
                [
                    g.op("Max", [g.y, g.c(0.0)]),
                    g.op(
                        "Min",
                        [
                            g.op(
                                "Mul",
                                [
                                    g.c(_SELU_A),
                                    g.op(
                                        "Sub",
                                        [g.op("Exp", [g.op("Min", [g.y, g.c(0.0)])]), g.c(1.0)],
                                    ),
                                ],
                            ),
                            g.c(0.0),
                        ],
                    ),
                ],
            ),
        ],
    )
)
rewrite(
    "Celu",
    "Celu",
    equiv_note="Add(Max(x,0), Min(Mul(alpha, Sub(Exp(Div(Min(x,0), alpha)), 1)), 0))",
)(
    lambda g: g.op(
        "Add",
        [
            g.op("Max", [g.y, g.c(0.0)]),
            g.op(
                "Min",
                [
                    g.op(
                        "Mul",
                        [
                            g.c(1.0),
                            g.op(
                                "Sub",
                                [
                                    g.op(
                                        "Exp",
                                        [g.op("Div", [g.op("Min", [g.y, g.c(0.0)]), g.c(1.0)])],
                                    ),
                                    g.c(1.0),
                                ],
                            ),
                        ],
                    ),
                    g.c(0.0),
                ],
            ),
        ],
    )
)
_K = 0.7978845608028654  # sqrt(2/pi)
rewrite(
    "Gelu tanh",
    "Gelu tanh",
    equiv_note="Mul(Mul(0.5, x), Add(1, Tanh(Mul(sqrt(2/pi), Add(x, Mul(0.044715, "
    "Mul(Mul(x, x), x)))))))",
)(
    lambda g: g.op(
        "Mul",
        [
            g.op("Mul", [g.c(0.5), g.y]),
            g.op(
                "Add",
                [
                    g.c(1.0),
                    g.op(
                        "Tanh",
                        [
                            g.op(
                                "Mul",
                                [
                                    g.c(_K),
                                    g.op(
                                        "Add",
                                        [
                                            g.y,
                                            g.op(
                                                "Mul",
                                                [
                                                    g.c(0.044715),
                                                    g.op("Mul", [g.op("Mul", [g.y, g.y]), g.y]),
                                                ],
                                            ),
                                        ],
                                    ),
                                ],
                            )
                        ],
                    ),
                ],
            ),
        ],
    )
)
rewrite("Mish", "Mish", equiv_note="Mul(x, Tanh(softplus rewrite))")(
    lambda g: g.op("Mul", [g.y, g.op("Tanh", [_softplus(g, g.y)])])
)

# ---- variadic / reductions ----------------------------------------------------------------
rewrite("Sum", "Sum", equiv_note="Add(Add(a, b), c)")(
    lambda g: g.op("Add", [g.op("Add", [g.y, g.op("Mul", [g.y, g.c(0.5)])]), g.c(1.0)])
)
rewrite("Mean div", "Mean", equiv_note="Div(Add(a, b), 2)")(
    lambda g: g.op("Div", [g.op("Add", [g.y, g.op("Mul", [g.y, g.c(0.5)])]), g.c(2.0)])
)
rewrite("Mean mul", "Mean", equiv_note="Mul(Add(a, b), 0.5)")(
    lambda g: g.op("Mul", [g.op("Add", [g.y, g.op("Mul", [g.y, g.c(0.5)])]), g.c(0.5)])
)
rewrite("GlobalMaxPool", "GlobalMaxPool", equiv_note="MaxPool(kernel_shape=[H,W])")(
    lambda g: g.op("MaxPool", [g.y], kernel_shape=[8, 8])
)
rewrite("ReduceMax", "ReduceMax", equiv_note="axes [2,3] keepdims=1: MaxPool(kernel [H,W])")(
    lambda g: g.op("MaxPool", [g.y], kernel_shape=[8, 8])
)
case("ReduceMax axis1", op="ReduceMax", note="opset 17, axes attr [1], keepdims=1")(
    lambda g: g.op("ReduceMax", [g.y], axes=[1])
)
rewrite("ReduceMax topk", "ReduceMax axis1", equiv_note="TopK(x, K=[1], axis=1) values")(
    lambda g: g.op("TopK", [g.y, g.i64([1])], outs=2, axis=1)[0]
)

# ---- data movement --------------------------------------------------------------------------


def _d2s(g: G, x: str, b: int, mode: str, n=2, c=4, h=8, w=8) -> str:
    if mode == "DCR":
        t = g.op("Reshape", [x, g.i64([n, b, b, c // (b * b), h, w])])
        t = g.op("Transpose", [t], perm=[0, 3, 4, 1, 5, 2])
    else:
        t = g.op("Reshape", [x, g.i64([n, c // (b * b), b, b, h, w])])
        t = g.op("Transpose", [t], perm=[0, 1, 4, 2, 5, 3])
    return g.op("Reshape", [t, g.i64([n, c // (b * b), h * b, w * b])])


rewrite(
    "DepthToSpace",
    "DepthToSpace",
    equiv_note="DCR: Reshape [N,b,b,C/b²,H,W], Transpose [0,3,4,1,5,2], Reshape",
)(lambda g: _d2s(g, g.y, 2, "DCR"))
rewrite(
    "DepthToSpace CRD",
    "DepthToSpace CRD",
    equiv_note="CRD: Reshape [N,C/b²,b,b,H,W], Transpose [0,1,4,2,5,3], Reshape",
)(lambda g: _d2s(g, g.y, 2, "CRD"))
rewrite(
    "SpaceToDepth",
    "SpaceToDepth",
    equiv_note="Reshape [N,C,H/b,b,W/b,b], Transpose [0,3,5,1,2,4], Reshape",
)(
    lambda g: g.op(
        "Reshape",
        [
            g.op(
                "Transpose",
                [g.op("Reshape", [g.y, g.i64([2, 4, 4, 2, 4, 2])])],
                perm=[0, 3, 5, 1, 2, 4],
            ),
            g.i64([2, 16, 4, 4]),
        ],
    )
)
rewrite("Split", "Split one output used", equiv_note="Slice(x, [0], [1], axes [1])")(
    lambda g: g.op("Slice", [g.y, g.i64([0]), g.i64([1]), g.i64([1])])
)
rewrite("Split last", "Split last output used", equiv_note="Slice(x, [1], [4], axes [1])")(
    lambda g: g.op("Slice", [g.y, g.i64([1]), g.i64([4]), g.i64([1])])
)
rewrite("Slice flip", "Slice flip", equiv_note="Gather(x, [7,6,...,0], axis 3)")(
    lambda g: g.op("Gather", [g.y, g.i64(list(range(7, -1, -1)))], axis=3)
)
rewrite("Slice step -2", "Slice step -2", equiv_note="Gather(x, [7,5,3,1], axis 3)")(
    lambda g: g.op("Gather", [g.y, g.i64([7, 5, 3, 1])], axis=3)
)


def _reflect_idx(n: int, before: int, after: int) -> list:
    return list(range(before, 0, -1)) + list(range(n)) + [n - 2 - k for k in range(after)]


rewrite(
    "Pad reflect",
    "Pad reflect",
    equiv_note="Gather(x, [1,0..7,6], axis 2), then the same on axis 3",
)(
    lambda g: g.op(
        "Gather",
        [g.op("Gather", [g.y, g.i64(_reflect_idx(8, 1, 1))], axis=2), g.i64(_reflect_idx(8, 1, 1))],
        axis=3,
    )
)
case("Pad edge", op="Pad", note="mode=edge")(
    lambda g: g.op("Pad", [g.y, g.i64([0, 0, 2, 1, 0, 0, 1, 2])], mode="edge")
)
rewrite("Pad edge", "Pad edge", equiv_note="Gather(x, [0,0,0..7,7], axis 2), same on axis 3")(
    lambda g: g.op(
        "Gather",
        [
            g.op("Gather", [g.y, g.i64([0, 0] + list(range(8)) + [7])], axis=2),
            g.i64([0] + list(range(8)) + [7, 7]),
        ],
        axis=3,
    )
)
rewrite(
    "Einsum", "Einsum", equiv_note="Transpose [0,2,3,1], MatMul(Transpose(E)), Transpose [0,3,1,2]"
)(
    lambda g: g.op(
        "Transpose",
        [
            g.op(
                "MatMul",
                [
                    g.op("Transpose", [g.y], perm=[0, 2, 3, 1]),
                    g.op("Transpose", [g.param("E", (5, 4))], perm=[1, 0]),
                ],
            )
        ],
        perm=[0, 3, 1, 2],
    )
)

# ---- resampling ---------------------------------------------------------------------------


def _nearest_expand(g: G, x: str, s: int, n=2, c=4, h=8, w=8) -> str:
    t = g.op("Reshape", [x, g.i64([n, c, h, 1, w, 1])])
    t = g.op("Expand", [t, g.i64([n, c, h, s, w, s])])
    return g.op("Reshape", [t, g.i64([n, c, h * s, w * s])])


rewrite(
    "Resize nearest expand",
    "Resize nearest",
    equiv_note="Reshape [N,C,H,1,W,1], Expand [N,C,H,2,W,2], Reshape [N,C,2H,2W]",
)(lambda g: _nearest_expand(g, g.y, 2))
rewrite("Resize nearest sizes expand", "Resize nearest sizes", equiv_note="as above")(
    lambda g: _nearest_expand(g, g.y, 2)
)
rewrite("Upsample expand", "Upsample", equiv_note="as above")(lambda g: _nearest_expand(g, g.y, 2))


def _resize_matrices(node_attrs: dict, scales, in_hw=(8, 8)):
    """A_h [Ho,H] and A_w^T [W,Wo] for a separable Resize, measured by running ORT's Resize
    on one-hot inputs (one axis resized at a time)."""
    import onnx
    from onnx import TensorProto, helper

    mats = []
    for axis in (2, 3):
        n = in_hw[axis - 2]
        basis = np.eye(n, dtype=np.float32)
        shape = [n, 1, n, 1] if axis == 2 else [n, 1, 1, n]
        sc = [1.0, 1.0, 1.0, 1.0]
        sc[axis] = float(scales[axis])
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], **node_attrs)
        graph = helper.make_graph(
            [node],
            "m",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [onnx.numpy_helper.from_array(np.array(sc, np.float32), "s")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        y = _session(model).run(None, {"x": basis.reshape(shape)})[0]
        mats.append(y.reshape(n, -1))  # row k = image of e_k
    a_h = mats[0].T.copy()  # [Ho, H]
    a_wt = mats[1].copy()  # [W, Wo]
    return a_h, a_wt


def _resize_matmul(attrs: dict):
    def build(g: G) -> str:
        a_h, a_wt = _resize_matrices(attrs, [1, 1, 2, 2])
        t = g.op("MatMul", [g.y, g.c(a_wt)])
        return g.op("MatMul", [g.c(a_h), t])

    return build


rewrite(
    "Resize nearest matmul",
    "Resize nearest",
    equiv_note="MatMul(A_h, MatMul(x, A_w^T)), 0/1 matrices measured from ORT Resize",
)(
    _resize_matmul(
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    )
)
rewrite(
    "Resize linear matmul",
    "Resize linear",
    equiv_note="MatMul(A_h, MatMul(x, A_w^T)), weights measured from ORT Resize",
)(_resize_matmul({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}))
rewrite("Resize linear ac matmul", "Resize linear ac", equiv_note="as above, align_corners")(
    _resize_matmul({"mode": "linear", "coordinate_transformation_mode": "align_corners"})
)
rewrite("Resize cubic matmul", "Resize cubic", equiv_note="as above, cubic")(
    _resize_matmul({"mode": "cubic"})
)


def _convtranspose_as_conv(
    g: G,
    x: str,
    wt: str,
    wt_shape,
    bias,
    s: int,
    k: int,
    p: int,
    op_pad: int,
    group: int = 1,
    dil: int = 1,
    n=2,
    h=8,
    w=8,
) -> str:
    """ConvTranspose (symmetric 2-D attributes) = zero insertion + pad + Conv(W') with
    W' = flip_hw(regroup(W)): [Cin, Cout/g, k, k] -> [g, Cin/g, Cout/g, k, k]
    -> Transpose [0,2,1,3,4] -> [Cout, Cin/g, k, k] -> reverse both kernel axes."""
    cin, cout_g = wt_shape[0], wt_shape[1]
    t = g.op("Reshape", [x, g.i64([n, cin, h, 1, w, 1])])
    t = g.op("Pad", [t, g.i64([0, 0, 0, 0, 0, 0, 0, 0, 0, s - 1, 0, s - 1])])
    t = g.op("Reshape", [t, g.i64([n, cin, h * s, w * s])])
    begin = dil * (k - 1) - p
    end = dil * (k - 1) - p + op_pad - (s - 1)
    assert begin >= 0
    if end >= 0:
        t = g.op("Pad", [t, g.i64([0, 0, begin, begin, 0, 0, end, end])])
    else:
        t = g.op("Pad", [t, g.i64([0, 0, begin, begin, 0, 0, 0, 0])])
        t = g.op("Slice", [t, g.i64([0, 0]), g.i64([end, end]), g.i64([2, 3])])
    wc = g.op("Reshape", [wt, g.i64([group, cin // group, cout_g, k, k])])
    wc = g.op("Transpose", [wc], perm=[0, 2, 1, 3, 4])
    wc = g.op("Reshape", [wc, g.i64([group * cout_g, cin // group, k, k])])
    rev = g.i64(list(range(k - 1, -1, -1)))
    wc = g.op("Gather", [g.op("Gather", [wc, rev], axis=2), rev], axis=3)
    ins = [t, wc] + ([bias] if bias else [])
    return g.op("Conv", ins, group=group, dilations=[dil, dil])


rewrite(
    "ConvTranspose k2s2",
    "ConvTranspose",
    equiv_note="zero-insertion (Reshape, Pad, Reshape), Pad, Conv(flip(Transpose(W)))",
)(
    lambda g: _convtranspose_as_conv(
        g, g.y, g.param("Wt", (4, 2, 2, 2), 0.3), (4, 2, 2, 2), None, 2, 2, 0, 0
    )
)
rewrite(
    "ConvTranspose k3s2p1op1",
    "ConvTranspose trainable",
    equiv_note="as above, with bias; W_t and bias trainable",
)(
    lambda g: _convtranspose_as_conv(
        g, g.y, g.param("Wt", (4, 2, 3, 3), 0.3), (4, 2, 3, 3), g.param("Bt", (2,)), 2, 3, 1, 1
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
rewrite("ConvTranspose k4s2p1 group2", "ConvTranspose k4s2p1 group2", equiv_note="as above")(
    lambda g: _convtranspose_as_conv(
        g, g.y, g.param("Wg", (4, 3, 4, 4), 0.2), (4, 3, 4, 4), None, 2, 4, 1, 0, group=2
    )
)
rewrite("ConvTranspose k3s1 dilation2", "ConvTranspose k3s1 dilation2", equiv_note="as above")(
    lambda g: _convtranspose_as_conv(
        g, g.y, g.param("Wd", (4, 2, 3, 3), 0.3), (4, 2, 3, 3), None, 1, 3, 2, 0, dil=2
    )
)


def _nearest_index_map(attrs: dict, scales, sizes=None, n: int = 8):
    """For each resized axis, the source index of every output index, measured by running
    ORT's nearest Resize on an iota input."""
    import onnx
    from onnx import TensorProto, helper

    maps = []
    for axis in (2, 3):
        shape = [1, 1, n, 1] if axis == 2 else [1, 1, 1, n]
        iota = np.arange(n, dtype=np.float32).reshape(shape)
        inits = []
        if sizes is not None:
            sz = [1, 1, 1, 1]
            sz[axis] = sizes[axis]
            ins = ["x", "", "", "sz"]
            inits.append(onnx.numpy_helper.from_array(np.array(sz, np.int64), "sz"))
        else:
            sc = [1.0, 1.0, 1.0, 1.0]
            sc[axis] = float(scales[axis])
            ins = ["x", "", "s"]
            inits.append(onnx.numpy_helper.from_array(np.array(sc, np.float32), "s"))
        node = helper.make_node("Resize", ins, ["y"], **attrs)
        graph = helper.make_graph(
            [node],
            "m",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        maps.append(_session(model).run(None, {"x": iota})[0].ravel().astype(np.int64))
    return maps


def _resize_gather(attrs: dict, scales=None, sizes=None):
    def build(g: G) -> str:
        mh, mw = _nearest_index_map(attrs, scales, sizes)
        return g.op("Gather", [g.op("Gather", [g.y, g.i64(mh)], axis=2), g.i64(mw)], axis=3)

    return build


rewrite(
    "Resize nearest gather",
    "Resize nearest",
    equiv_note="Gather(x, map_h, axis 2), Gather(., map_w, axis 3); maps measured by "
    "resizing an iota with ORT",
)(
    _resize_gather(
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
        scales=[1, 1, 2, 2],
    )
)
rewrite("Resize nearest sizes gather", "Resize nearest sizes", equiv_note="as above")(
    _resize_gather({"mode": "nearest"}, sizes=[2, 4, 16, 16])
)
case(
    "Resize nearest x1.5 down",
    op="Resize",
    note="sizes [2,4,12,5] (up 1.5 and down 0.625), half_pixel, round_prefer_floor",
)(lambda g: g.op("Resize", [g.y, "", "", g.i64([2, 4, 12, 5])], mode="nearest"))
rewrite("Resize nearest x1.5 down gather", "Resize nearest x1.5 down", equiv_note="as above")(
    _resize_gather({"mode": "nearest"}, sizes=[2, 4, 12, 5])
)
rewrite(
    "LRN",
    "LRN",
    equiv_note="x / Pow(bias + (alpha/size) * Conv(Reshape(x*x, [N,1,C,HW]), ones[1,1,size,1], "
    "pads [2,0,2,0]) reshaped back, beta)",
)(
    lambda g: g.op(
        "Div",
        [
            g.y,
            g.op(
                "Pow",
                [
                    g.op(
                        "Add",
                        [
                            g.c(1.0),
                            g.op(
                                "Mul",
                                [
                                    g.c(1e-4 / 5),
                                    g.op(
                                        "Reshape",
                                        [
                                            g.op(
                                                "Conv",
                                                [
                                                    g.op(
                                                        "Reshape",
                                                        [
                                                            g.op("Mul", [g.y, g.y]),
                                                            g.i64([2, 1, 4, 64]),
                                                        ],
                                                    ),
                                                    g.c(np.ones((1, 1, 5, 1))),
                                                ],
                                                pads=[2, 0, 2, 0],
                                            ),
                                            g.i64([2, 4, 8, 8]),
                                        ],
                                    ),
                                ],
                            ),
                        ],
                    ),
                    g.c(0.75),
                ],
            ),
        ],
    )
)
rewrite("ReduceMin", "ReduceMin", equiv_note="Neg(MaxPool(Neg(x), kernel [H,W]))")(
    lambda g: g.op("Neg", [g.op("MaxPool", [g.op("Neg", [g.y])], kernel_shape=[8, 8])])
)
rewrite("ReduceSumSquare", "ReduceSumSquare", equiv_note="ReduceSum(Mul(x,x), axes, keepdims)")(
    lambda g: g.op("ReduceSum", [g.op("Mul", [g.y, g.y]), g.i64([2, 3])])
)
rewrite("ReduceL1", "ReduceL1", equiv_note="ReduceSum(Abs(x), axes, keepdims)")(
    lambda g: g.op("ReduceSum", [g.op("Abs", [g.y]), g.i64([2, 3])])
)
rewrite("ThresholdedRelu", "ThresholdedRelu", equiv_note="Where(Greater(x, alpha), x, 0)")(
    lambda g: g.op("Where", [g.op("Greater", [g.y, g.c(0.5)]), g.y, g.c(0.0)])
)


# ---- normalization / dropout --------------------------------------------------------------


def _ln_core(g: G, x: str, shape3, eps: float = 1e-5) -> str:
    """LayerNormalization over the last axis of Reshape(x, shape3) with unit scale, zero bias,
    and the optional outputs declared (the gradient builder needs them)."""
    n = shape3[-1]
    t = g.op("Reshape", [x, g.i64(shape3)])
    return g.op(
        "LayerNormalization", [t, g.c(np.ones(n)), g.c(np.zeros(n))], outs=3, axis=-1, epsilon=eps
    )[0]


rewrite(
    "InstanceNormalization",
    "InstanceNormalization",
    equiv_note="Reshape [N,C,HW], LayerNormalization(axis -1, ones, zeros, 3 outputs), "
    "Reshape [N,C,H,W], Mul(Reshape(scale,[C,1,1])), Add(Reshape(bias,[C,1,1]))",
)(
    lambda g: g.op(
        "Add",
        [
            g.op(
                "Mul",
                [
                    g.op("Reshape", [_ln_core(g, g.y, [2, 4, 64]), g.i64([2, 4, 8, 8])]),
                    g.op("Reshape", [g.param("in_s", (4,), low=0.5, high=1.5), g.i64([4, 1, 1])]),
                ],
            ),
            g.op("Reshape", [g.param("in_b", (4,)), g.i64([4, 1, 1])]),
        ],
    )
)
rewrite(
    "GroupNormalization 18",
    "GroupNormalization",
    equiv_note="Reshape [N,G,-1], LayerNormalization(ones, zeros, 3 outputs), "
    "Mul(Reshape(scale,[G,1])), Add(Reshape(bias,[G,1])), Reshape [N,C,H,W]",
)(
    lambda g: g.op(
        "Reshape",
        [
            g.op(
                "Add",
                [
                    g.op(
                        "Mul",
                        [
                            _ln_core(g, g.y, [2, 2, 128]),
                            g.op(
                                "Reshape", [g.param("gn_s", (2,), low=0.5, high=1.5), g.i64([2, 1])]
                            ),
                        ],
                    ),
                    g.op("Reshape", [g.param("gn_b", (2,)), g.i64([2, 1])]),
                ],
            ),
            g.i64([2, 4, 8, 8]),
        ],
    )
)
rewrite(
    "GroupNormalization 21",
    "GroupNormalization 21",
    equiv_note="Reshape [N,G,-1], LayerNormalization(ones, zeros, 3 outputs), "
    "Reshape [N,C,H,W], Mul(Reshape(scale,[C,1,1])), Add(Reshape(bias,[C,1,1]))",
)(
    lambda g: g.op(
        "Add",
        [
            g.op(
                "Mul",
                [
                    g.op("Reshape", [_ln_core(g, g.y, [2, 2, 128]), g.i64([2, 4, 8, 8])]),
                    g.op("Reshape", [g.param("gn21_s", (4,), low=0.5, high=1.5), g.i64([4, 1, 1])]),
                ],
            ),
            g.op("Reshape", [g.param("gn21_b", (4,)), g.i64([4, 1, 1])]),
        ],
    )
)
rewrite(
    "LayerNormalization",
    "LayerNormalization",
    equiv_note="same node with the optional outputs Mean, InvStdDev declared",
)(
    lambda g: g.op(
        "LayerNormalization",
        [g.y, g.param("ln_s", (8,), low=0.5, high=1.5), g.param("ln_b", (8,))],
        outs=3,
        axis=-1,
    )[0]
)
rewrite(
    "LayerNormalization axis1",
    "LayerNormalization axis1",
    equiv_note="same node plus a zero bias input and the 3 outputs",
)(
    lambda g: g.op(
        "LayerNormalization",
        [g.y, g.param("ln1_s", (4, 8, 8), low=0.5, high=1.5), g.c(np.zeros((4, 8, 8)))],
        outs=3,
        axis=1,
    )[0]
)
case("Dropout mask ratio 0.5", op="Dropout", note="ratio 0.5, mask output declared")(
    lambda g: g.op("Dropout", [g.y, g.c(0.5)], outs=2)[0]
)
rewrite("Dropout", "Dropout", equiv_note="Identity (inference Dropout is the identity)")(
    lambda g: g.op("Identity", [g.y])
)
rewrite("Dropout mask", "Dropout mask", equiv_note="Identity")(lambda g: g.op("Identity", [g.y]))


def _bn_fold(g: G) -> str:
    """BatchNormalization inference form as ORT computes it: inv_std = 1/sqrt(var+eps),
    s = scale*inv_std, t = bias - mean*s, y = x*s + t (scale/bias may be trainable)."""
    vals = {"bn_m": G.draw("bn_m", (4,), 0.2), "bn_v": G.draw("bn_v", (4,), low=0.5, high=2.0)}
    inv_std = (np.float32(1.0) / np.sqrt(vals["bn_v"] + np.float32(1e-5))).astype(np.float32)
    s = g.op("Mul", [g.param("bn_s", (4,), low=0.5, high=1.5), g.c(inv_std)])
    t = g.op("Sub", [g.param("bn_b", (4,)), g.op("Mul", [g.c(vals["bn_m"]), s])])
    y = g.op("Mul", [g.y, g.op("Reshape", [s, g.i64([4, 1, 1])])])
    return g.op("Add", [y, g.op("Reshape", [t, g.i64([4, 1, 1])])])


rewrite(
    "BatchNormalization fold",
    "BatchNormalization trainable",
    equiv_note="inv_std = 1/sqrt(var+eps) (constant); s = Mul(scale, inv_std); "
    "t = Sub(bias, Mul(mean, s)); y = Add(Mul(x, Reshape(s,[C,1,1])), "
    "Reshape(t,[C,1,1]))",
)(_bn_fold)
rewrite("BatchNormalization fold frozen", "BatchNormalization", equiv_note="as above")(_bn_fold)

# ---- recurrent ----------------------------------------------------------------------------

for _d in ["reverse", "bidirectional"]:
    case(
        f"LSTM {_d} torch trainable",
        op="LSTM",
        grad=("lstm_W", "lstm_R", "lstm_B"),
        note=f"direction={_d}, {_T7}, W/R/B trainable",
    )(_rnn("LSTM", _d, n_in=7, states=True))
case(
    "GRU bidirectional torch trainable",
    op="GRU",
    grad=("gru_W", "gru_R", "gru_B"),
    note=f"direction=bidirectional, {_T6}, lbr=1, W/R/B trainable",
)(_rnn("GRU", "bidirectional", lbr=1, n_in=6, states=True))


def _rnn_split(op: str, direction: str, lbr: int = 0, zero_gate: bool = False):
    """reverse/bidirectional LSTM/GRU as forward-only nodes: a reverse direction runs forward
    on Gather(x, [S-1..0], axis 0) and its Y is reversed back the same way; the directions'
    W/R/B/h0/c0 are Gather(param, [d], axis 0); Y = Concat(axis 1), Y_h/Y_c = Concat(axis 0).
    zero_gate: frozen W/R enter as Add(W, Mul(Z, 0)) with a trainable scalar Z = 0."""
    nd = 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3}[op]
    hid, seq = 5, 8

    def build(g: G) -> str:
        p = op.lower()
        w = g.param(f"{p}_W", (nd, gates * hid, 32), 0.2)
        r = g.param(f"{p}_R", (nd, gates * hid, hid), 0.2)
        b = g.param(f"{p}_B", (nd, 2 * gates * hid), 0.1)
        if zero_gate:
            z = g.init(f"{p}_Z", np.zeros((1,), np.float32))
            zero = g.op("Mul", [z, g.c(0.0)])
            w = g.op("Add", [w, zero])
            r = g.op("Add", [r, zero])
        x = _seq(g)
        rev = g.i64(list(range(seq - 1, -1, -1)))
        ys = []
        dirs = ["forward", "reverse"] if nd == 2 else [direction]
        for k, dname in enumerate(dirs):
            sel = g.i64([k])
            wk, rk, bk = (g.op("Gather", [t, sel], axis=0) if nd == 2 else t for t in (w, r, b))
            xk = g.op("Gather", [x, rev], axis=0) if dname == "reverse" else x
            ins = [xk, wk, rk, bk, "", g.c(np.zeros((1, 2, hid)))]
            attrs = {"hidden_size": hid}
            if op == "LSTM":
                ins.append(g.c(np.zeros((1, 2, hid))))
            else:
                attrs["linear_before_reset"] = lbr
            yk = g.op(op, ins, outs=3 if op == "LSTM" else 2, **attrs)[0]
            if dname == "reverse":
                yk = g.op("Gather", [yk, rev], axis=0)
            ys.append(yk)
        return ys[0] if len(ys) == 1 else g.op("Concat", ys, axis=1)

    return build


rewrite(
    "LSTM reverse",
    "LSTM reverse torch trainable",
    equiv_note="Gather(x, [S-1..0], axis 0), forward LSTM, Gather(Y, [S-1..0], axis 0)",
)(_rnn_split("LSTM", "reverse"))
rewrite(
    "LSTM bidirectional",
    "LSTM bidirectional torch trainable",
    equiv_note="forward LSTM(W[0:1]...) and reversed LSTM(W[1:2]...), Concat(Y, axis 1)",
)(_rnn_split("LSTM", "bidirectional"))
rewrite("GRU bidirectional", "GRU bidirectional torch trainable", equiv_note="as for LSTM")(
    _rnn_split("GRU", "bidirectional", lbr=1)
)
rewrite(
    "LSTM frozen zero-gate",
    "LSTM forward torch",
    grad=("lstm_Z",),
    equiv_note="frozen W, R enter as Add(W, Mul(Z, 0)), Z a trainable scalar 0",
)(_rnn_split("LSTM", "forward", zero_gate=True))
rewrite("GRU frozen zero-gate", "GRU forward torch lbr1", grad=("gru_Z",), equiv_note="as above")(
    _rnn_split("GRU", "forward", lbr=1, zero_gate=True)
)


# --------------------------------------------------------------------------------------------
# Worker (runs in a subprocess)
# --------------------------------------------------------------------------------------------


def _import_training():
    """Import onnxruntime.training's torch-free parts (its __init__ imports torch)."""
    import types

    import onnxruntime

    if "onnxruntime.training" not in sys.modules:
        mod = types.ModuleType("onnxruntime.training")
        mod.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
        sys.modules["onnxruntime.training"] = mod
    from onnxruntime.training import artifacts
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    onnxruntime.set_default_logger_severity(3)
    return artifacts, CheckpointState, Module, Optimizer


def _stage(name: str) -> None:
    print(STAGE_MARK + name, flush=True)


def _session(model):
    import onnxruntime

    so = onnxruntime.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def _build(c: Case, conv: bool = True):
    g = G(opset=c.opset, conv=conv)
    out = c.build(g)
    return g.model(out)


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


def worker(name: str) -> dict:
    c = CASES[name]
    res: dict = {"case": name, "stage": "build"}
    rng = np.random.default_rng(1234)
    _stage("build")
    model = _build(c)
    grad_names = ["W", *c.grad]
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

    artifacts, CheckpointState, Module, Optimizer = _import_training()
    import onnx

    tmp = tempfile.mkdtemp(prefix="ortprobe_")
    cwd = os.getcwd()
    try:
        os.chdir(tmp)
        _stage("generate")
        res["stage"] = "generate"
        try:
            artifacts.generate_artifacts(
                model,
                requires_grad=grad_names,
                frozen_params=[],
                loss=artifacts.LossType.MSELoss,
                optimizer=artifacts.OptimType.AdamW,
                artifact_directory=tmp,
            )
        except Exception as e:  # noqa: BLE001
            res.update(status="error", error=f"{type(e).__name__}: {e}")
            return res
        for f in sorted(os.listdir(tmp)):
            if f.endswith(".onnx"):
                m = onnx.load(os.path.join(tmp, f))
                if m.ir_version > 10:
                    m.ir_version = 10
                    onnx.save(m, os.path.join(tmp, f))
        train_m = onnx.load(os.path.join(tmp, "training_model.onnx"))
        # the gradient nodes of the probed op(s): named "<forward node>_Grad/..."; the Conv's
        # (n1_Conv) and the output Identity's are the same in every case
        res["grad_ops"] = sorted(
            {
                n.op_type
                for n in train_m.graph.node
                if "_Grad/" in n.name
                and re.match(r"n\d+_", n.name)
                and not n.name.startswith("n1_Conv_Grad")
            }
        )

        _stage("load")
        res["stage"] = "load"
        try:
            state = CheckpointState.load_checkpoint(os.path.join(tmp, "checkpoint"))
            module = Module(
                os.path.join(tmp, "training_model.onnx"),
                state,
                os.path.join(tmp, "eval_model.onnx"),
            )
            opt = Optimizer(os.path.join(tmp, "optimizer_model.onnx"), module)
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
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)

    _stage("gradcheck")
    res["stage"] = "gradcheck"
    res["status"] = "ok"
    ref_case = CASES[c.ref] if c.ref else c
    ref_model, values = _params_as_inputs(_build(ref_case), grad_names)
    sess = _session(ref_model)

    def loss_at(vals) -> float:
        out = sess.run(None, {"X": x, **vals})[0].astype(np.float64)
        return float(np.mean((out - target.astype(np.float64)) ** 2))

    res["infer_loss"] = loss_at(values)
    rels = {}
    drng = np.random.default_rng(99)
    for p in grad_names:
        if p not in values:  # a parameter the rewrite added (e.g. a zero-gated dummy)
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
            best = None
            for eps in (1e-2, 3e-3, 1e-3):
                plus = dict(values)
                minus = dict(values)
                plus[p] = (values[p] + eps * d).astype(np.float32)
                minus[p] = (values[p] - eps * d).astype(np.float32)
                fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
                err = abs(fd - analytic) / max(gnorm, abs(fd), 1e-12)
                best = err if best is None else min(best, err)
            worst = max(worst, best)
        rels[p] = worst
    res["grad_rel_err"] = rels
    res["stage"] = "done"
    return res


# --------------------------------------------------------------------------------------------
# Equivalence of a rewrite with the original op (InferenceSession, random + special inputs)
# --------------------------------------------------------------------------------------------

SPECIAL = [
    0.0,
    -0.0,
    1e-30,
    -1e-30,
    1e-7,
    -1e-7,
    0.5,
    -0.5,
    1.0,
    -1.0,
    2.5,
    -2.5,
    3.0,
    -3.0,
    2.9999998,
    -2.9999998,
    3.0000002,
    -3.0000002,
    6.0,
    -6.0,
    10.0,
    -10.0,
    50.0,
    -50.0,
    88.0,
    -88.0,
    100.0,
    -100.0,
    1e4,
    -1e4,
]


def _ordered(a: np.ndarray) -> np.ndarray:
    i = a.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def equiv(name: str) -> dict:
    c = CASES[name]
    ref = CASES[c.ref]
    s_orig = _session(_build(ref, conv=False))
    s_new = _session(_build(c, conv=False))
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
        "max_ulp": max_ulp,
        "bitwise": bitwise,
        "value_exact": value_exact,
        "max_abs": max_abs,
        "max_scaled": max_scaled,
        "max_rel": max_rel,
    }


# --------------------------------------------------------------------------------------------
# Special checks (each also runs in a subprocess)
# --------------------------------------------------------------------------------------------


def _train_once(model, requires_grad, frozen, feeds):
    """generate_artifacts + IR fix + one train step; returns (state, module, loss, tmpdir)."""
    artifacts, CheckpointState, Module, Optimizer = _import_training()
    import onnx

    tmp = tempfile.mkdtemp(prefix="ortprobe_")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        artifacts.generate_artifacts(
            model,
            requires_grad=requires_grad,
            frozen_params=frozen,
            loss=artifacts.LossType.MSELoss,
            optimizer=artifacts.OptimType.AdamW,
            artifact_directory=tmp,
        )
    finally:
        os.chdir(cwd)
    for f in os.listdir(tmp):
        if f.endswith(".onnx"):
            m = onnx.load(os.path.join(tmp, f))
            m.ir_version = min(m.ir_version, 10)
            onnx.save(m, os.path.join(tmp, f))
    state = CheckpointState.load_checkpoint(os.path.join(tmp, "checkpoint"))
    module = Module(
        os.path.join(tmp, "training_model.onnx"), state, os.path.join(tmp, "eval_model.onnx")
    )
    opt = Optimizer(os.path.join(tmp, "optimizer_model.onnx"), module)
    module.train()
    loss = float(module(*feeds))
    return state, module, opt, loss, tmp


def special_gelu_tanh() -> dict:
    """Which derivative does ORT train ONNX Gelu(approximate='tanh') with?"""
    from math import erf, pi, sqrt

    from onnx import TensorProto, helper

    out = {}
    p = np.linspace(-4, 4, 256, dtype=np.float32).reshape(1, 4, 8, 8)
    pd = p.astype(np.float64)
    d_erf = 0.5 * (1 + np.vectorize(erf)(pd / sqrt(2))) + pd * np.exp(-pd * pd / 2) / sqrt(2 * pi)
    k = sqrt(2 / pi)
    u = k * (pd + 0.044715 * pd**3)
    d_tanh = 0.5 * (1 + np.tanh(u)) + 0.5 * pd * (1 - np.tanh(u) ** 2) * k * (
        1 + 3 * 0.044715 * pd**2
    )
    for approx in ("none", "tanh"):
        g = G(opset=20, conv=False)
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
    best = min(fits, key=fits.get)
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
    """Does the zero-gated dummy parameter of the frozen-LSTM rewrite stay exactly 0?"""
    from onnx import TensorProto, helper

    c = CASES["rewrite:LSTM frozen zero-gate"]
    model = _build(c)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    fwd = _session(model).run(None, {"X": x})[0]
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("out", TensorProto.FLOAT, list(fwd.shape))
    )
    target = rng.standard_normal(fwd.shape).astype(np.float32)
    state, module, opt, _, tmp = _train_once(model, ["W", "lstm_Z"], [], (x, target))
    w0 = np.array(state.parameters["W"].data)
    opt.step()
    for _ in range(4):
        module.lazy_reset_grad()
        module(x, target)
        opt.step()
    z = np.array(state.parameters["lstm_Z"].data)
    w = np.array(state.parameters["W"].data)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"Z_after_5_AdamW_steps": z.tolist(), "conv_W_changed": bool(not np.array_equal(w0, w))}


SPECIALS = {
    "gelu_tanh": special_gelu_tanh,
    "batchnorm": special_batchnorm,
    "zero_gate": special_zero_gate,
}


def scan_wheel() -> dict:
    """Gradient-builder classes and training kernels compiled into the installed wheel,
    read from the RTTI type names in onnxruntime_pybind11_state*.so (a CPU-only build, so
    every kernel class there is a CPU kernel)."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime")
    capi = os.path.join(os.path.dirname(spec.origin), "capi")
    so = [f for f in os.listdir(capi) if f.startswith("onnxruntime_pybind11_state")]
    data = open(os.path.join(capi, so[0]), "rb").read()
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
# Parent: run workers, classify, write the report
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
    if not msg:
        return ""
    for pat in ERROR_PATTERNS:
        m = re.search(pat, msg)
        if m:
            return m.group(0).strip()
    head = msg.split("\n")[0]
    for pre in ("[ONNXRuntimeError] : ",):
        if pre in head:
            head = head.split(pre, 1)[1]
    out = _skip_signature(head)
    out = re.sub(r"\s+", " ", out).strip()
    return out[:240]


def classify(r: dict) -> str:
    if r.get("crash"):
        return f"CRASH ({r['crash']}) at {r.get('stage')}"
    if r.get("timeout"):
        return f"TIMEOUT at {r.get('stage')}"
    if r.get("status") == "ok":
        tl, il = r.get("train_loss"), r.get("infer_loss")
        if tl is not None and il is not None and abs(tl - il) > 1e-4 * max(1.0, abs(il)):
            return (
                f"TRAINS A DIFFERENT FORWARD (train-step loss {tl:.5g} vs inference loss {il:.5g})"
            )
        bad = {p: v for p, v in r.get("grad_rel_err", {}).items() if v > 2e-3}
        if bad:
            return (
                "WRONG GRADIENT ("
                + ", ".join(f"{p}: rel err {v:.2g}" for p, v in bad.items())
                + ")"
            )
        return "OK"
    err = r.get("error", "")
    stage = r.get("stage")
    if "gradient builder has not been registered" in err:
        return "NO GRADIENT"
    if "Could not find an implementation" in err:
        m = re.search(r"Could not find an implementation for ([A-Za-z]+)\(", err)
        kern = m.group(1) if m else "?"
        if stage == "forward":
            return f"NOT RUNNABLE IN ORT INFERENCE ({kern})"
        return f"NO CPU KERNEL ({kern})"
    if stage == "forward":
        return "FORWARD FAILS"
    return f"ERROR at {stage}"


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


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render(results: dict, equivs: dict, specials: dict, meta: dict) -> str:
    import onnx
    import onnxruntime

    lines = [
        BEGIN_MARK,
        "",
        f"Generated by `python tools/probe_ort_gradients.py` on {meta['date']}: "
        f"onnxruntime {onnxruntime.__version__} (CPU), onnx {onnx.__version__}, "
        f"Python {platform.python_version()}, {meta['cases']} cases in {meta['seconds']:.0f} s.",
        "",
        "Result: **OK** = artifacts generated, one train step + optimizer step + eval step ran; "
        "the gradient of every trainable parameter matched a central finite difference of the "
        "reference forward model (directional derivatives along the gradient and along a random "
        "unit vector; error / |gradient| <= 2e-3) "
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
    order = {n: k for k, n in enumerate(CASES)}
    op_names = sorted(
        (n for n in results if CASES[n].kind == "op"), key=lambda n: (CASES[n].op.lower(), order[n])
    )
    for name in op_names:
        r = results[name]
        c = CASES[name]
        err = essential(r.get("error", "")) if r.get("status") != "ok" else ""
        if r.get("crash") and not r.get("status"):
            err = ""  # a killed process leaves only log noise on stderr
        note = c.note + (f" — `{_md_escape(err)}`" if err else "")
        gre = r.get("grad_rel_err") or {}
        gtxt = ", ".join(f"{v:.1e}" for v in gre.values())
        if classify(r).startswith("TRAINS A DIFFERENT"):
            gtxt = "n/a (vs inference forward: " + gtxt + ")"
        lines.append(
            f"| {name} | {c.op} | {c.opset} | {', '.join(['W', *c.grad])} | "
            f"{_md_escape(classify(r))} | {_md_escape(note)} | {gtxt} |"
        )
    lines += [
        "",
        "### Rewrites",
        "",
        "Probe as above, trainable parameters as listed; the gradient is checked against a "
        "finite difference of the ORIGINAL op's model. Equivalence: the rewrite vs the "
        "original op, one InferenceSession each, X [2,4,8,8] = random normal at scales "
        "0.5, 2, 4, 10 plus special values (0, -0, ±1e-30, ±1e-7, ±0.5, ±1, ±2.5, ±3 and "
        "its float neighbours, ±6, ±10, ±50, ±88, ±100, ±1e4).",
        "",
        "| rewrite | of | trainable | probe result | grad rel err | equivalence with the "
        "original op |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        c = CASES[name]
        if c.kind != "rewrite":
            continue
        e = equivs.get(name, {})
        gre = r.get("grad_rel_err") or {}
        gtxt = ", ".join(f"{v:.1e}" for v in gre.values())
        res_txt = classify(r)
        if r.get("status") != "ok":
            res_txt += f" `{essential(r.get('error', ''))}`"
        lines.append(
            f"| {name[len('rewrite:') :]} ({_md_escape(c.equiv_note)}) | {c.ref} | "
            f"{', '.join(['W', *c.grad])} | {_md_escape(res_txt)} | {gtxt} | "
            f"{_md_escape(e.get('equiv', 'not run'))} |"
        )
    lines += ["", "### Special checks", ""]
    for n, r in specials.items():
        doc = (SPECIALS[n].__doc__ or "").strip().split("\n")[0]
        body = {k: v for k, v in r.items() if k not in ("case", "seconds")}
        lines.append(f"- `{n}` ({doc}): `{json.dumps(body)}`")
    wheel = meta.get("wheel") or {}
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
    for name in op_names + [n for n in results if CASES[n].kind == "rewrite"]:
        r = results[name]
        if "grad_ops" in r:
            lines.append(f"- {name}: {', '.join(r['grad_ops']) or '(none)'}")
    lines += ["", END_MARK]
    return "\n".join(lines)


def write_doc(path: str, block: str) -> None:
    if os.path.exists(path):
        text = open(path, encoding="utf-8").read()
        if BEGIN_MARK in text and END_MARK in text:
            pre = text.split(BEGIN_MARK)[0]
            post = text.split(END_MARK, 1)[1]
            text = pre + block + post
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = "# ONNX Runtime 1.19.2 training: gradient support on CPU\n\n" + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="markdown file to update (between the probe markers)")
    ap.add_argument("--json", help="write the raw results as JSON")
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
        print(RESULT_MARK + json.dumps(SPECIALS[args.special]()), flush=True)
        return 0
    if args.list:
        for n, c in CASES.items():
            print(f"{n:40s} {c.op:20s} opset {c.opset}  {c.note or c.equiv_note}")
        return 0

    names = _select(args.only)
    t0 = time.time()
    # every worker's temporary files go below one directory, removed at the end (a crashed
    # worker cannot clean up after itself)
    run_tmp = tempfile.mkdtemp(prefix="ortprobe_run_")
    os.environ["TMPDIR"] = run_tmp
    tempfile.tempdir = None
    results: dict = {}
    equivs: dict = {}
    specials: dict = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        futs = {ex.submit(run_one, n, args.timeout): ("w", n) for n in names}
        for n in names:
            if CASES[n].kind == "rewrite":
                futs[ex.submit(run_one, n, args.timeout, "--equiv")] = ("e", n)
        if not args.no_special:
            for n in SPECIALS:
                futs[ex.submit(run_one, n, args.timeout, "--special")] = ("s", n)
        for fut in cf.as_completed(futs):
            kind, n = futs[fut]
            r = fut.result()
            if kind == "w":
                results[n] = r
                print(f"{n:40s} {classify(r):50s} {essential(r.get('error', ''))[:90]}", flush=True)
            elif kind == "e":
                equivs[n] = r
                print(f"{n:40s} equivalence: {r.get('equiv', r.get('error', '?'))}", flush=True)
            else:
                specials[n] = r
                print(f"special {n}: {json.dumps(r)}", flush=True)
    shutil.rmtree(run_tmp, ignore_errors=True)
    results = {n: results[n] for n in names}
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.time() - t0,
        "cases": len(names),
        "wheel": scan_wheel(),
    }
    print(f"{len(names)} cases in {meta['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"results": results, "equivalence": equivs, "specials": specials, "meta": meta},
                f,
                indent=1,
            )
    if args.out:
        write_doc(args.out, render(results, equivs, specials, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

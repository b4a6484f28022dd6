"""Training rewrites of elementwise ops: activations ORT 1.19.2 has no gradient for, the
tanh-approximated Gelu it differentiates wrongly, and the variadic Sum and Mean.

Each replacement uses only ops with CPU gradients and follows ORT's own CPU kernel formula
(``onnxruntime/core/providers/cpu/activation/activations.h``), which is what makes most of
them bit-exact; docs/ort-gradients.md has the measurements.
"""

from __future__ import annotations

import logging
from typing import Callable

import onnx

from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes

__all__ = ["ELEMENTWISE_REWRITES"]

logger = logging.getLogger(__name__)

# float32 values of the ONNX Selu defaults (the attribute defaults are float32).
_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875
_SQRT_2_OVER_PI = 0.7978845608028654


def _hardsigmoid(ed: Emitter, x: str, alpha: float, beta: float, dtype, out: str | None) -> str:
    t = ed.op("Add", [ed.op("Mul", [x, ed.const(alpha, dtype)]), ed.const(beta, dtype)])
    return ed.clip(t, 0.0, 1.0, dtype, output=out)


def rewrite_hardsigmoid(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None or ed.opset < 8:
        ed.skip("input type is not float32/float64, or opset < 8")
        return None
    attrs = attributes(node)
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    _hardsigmoid(ed, x, alpha, beta, dtype, node.output[0])
    return Outcome(f"HardSigmoid -> Clip(x*{alpha:.8g} + {beta:.8g}, 0, 1), bit-exact", True)


def rewrite_hardswish(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    # alpha 1/6 rounded to the input type, as ORT's kernel holds it; torch's formula
    # x*Clip(x+3, 0, 6)/6 differs from ORT by up to 1.9e-6.
    gate = _hardsigmoid(ed, x, 1.0 / 6.0, 0.5, dtype, None)
    ed.op("Mul", [x, gate], [node.output[0]])
    return Outcome("HardSwish -> Mul(x, Clip(x*(1/6) + 0.5, 0, 1)), bit-exact", True)


def rewrite_prelu(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, slope = node.input[0], node.input[1]
    dtype = ed.facts.float_dtype(x)
    if dtype is None or ed.opset < 7:
        ed.skip("input type is not float32/float64, or opset < 7 (other broadcasting)")
        return None
    # Relu(x) - slope*Relu(-x) reproduces ORT's kernel down to the sign of zeros, which
    # Max(x, 0) + slope*Min(x, 0) does not (-0 with a positive slope).
    negative = ed.op("Mul", [slope, ed.op("Relu", [ed.op("Neg", [x])])])
    ed.op("Sub", [ed.op("Relu", [x]), negative], [node.output[0]])
    return Outcome(
        f"PRelu -> Sub(Relu(x), Mul({slope}, Relu(-x))), bit-exact; the slope still trains",
        True,
    )


def rewrite_softsign(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    denominator = ed.op("Add", [ed.op("Abs", [x]), ed.const(1.0, dtype)])
    ed.op("Mul", [ed.op("Reciprocal", [denominator]), x], [node.output[0]])
    return Outcome("Softsign -> Mul(Reciprocal(Abs(x) + 1), x), bit-exact", True)


def rewrite_thresholdedrelu(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None or ed.opset < 9:
        ed.skip("input type is not float32/float64, or opset < 9 (no Where)")
        return None
    alpha = attributes(node).get("alpha", 1.0)
    above = ed.op("Greater", [x, ed.const(alpha, dtype)])
    ed.op("Where", [above, x, ed.const(0.0, dtype)], [node.output[0]])
    return Outcome(f"ThresholdedRelu -> Where(x > {alpha:.8g}, x, 0), bit-exact", True)


def _expm1_of_negative_part(ed: Emitter, x: str, dtype, divisor: float | None = None) -> str:
    """Exp(Min(x, 0)) - 1 (or of Min(x, 0)/divisor): Min keeps Exp finite, so the unused
    branch of a Where cannot turn into 0*inf = NaN gradients for large x."""
    t = ed.op("Min", [x, ed.const(0.0, dtype)])
    if divisor is not None:
        t = ed.op("Div", [t, ed.const(divisor, dtype)])
    return ed.op("Sub", [ed.op("Exp", [t]), ed.const(1.0, dtype)])


def rewrite_elu(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None or ed.opset < 9:
        ed.skip("input type is not float32/float64, or opset < 9 (no Where)")
        return None
    alpha = attributes(node).get("alpha", 1.0)
    negative = ed.op("Mul", [ed.const(alpha, dtype), _expm1_of_negative_part(ed, x, dtype)])
    below = ed.op("Less", [x, ed.const(0.0, dtype)])
    ed.op("Where", [below, negative, x], [node.output[0]])
    return Outcome(f"Elu -> Where(x < 0, {alpha:.8g}*(Exp(Min(x, 0)) - 1), x), within 4 ulp", False)


def rewrite_selu(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    attrs = attributes(node)
    alpha, gamma = attrs.get("alpha", _SELU_ALPHA), attrs.get("gamma", _SELU_GAMMA)
    zero = ed.const(0.0, dtype)
    negative = ed.op("Mul", [ed.const(alpha, dtype), _expm1_of_negative_part(ed, x, dtype)])
    inner = ed.op("Add", [ed.op("Max", [x, zero]), ed.op("Min", [negative, zero])])
    ed.op("Mul", [ed.const(gamma, dtype), inner], [node.output[0]])
    return Outcome(
        "Selu -> gamma*(Max(x, 0) + Min(alpha*(Exp(Min(x, 0)) - 1), 0)), within "
        f"{1.2e-7 * max(alpha * gamma, 1) * 1.5:.2g} absolute",
        False,
    )


def rewrite_celu(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    alpha = attributes(node).get("alpha", 1.0)
    zero = ed.const(0.0, dtype)
    expm1 = _expm1_of_negative_part(ed, x, dtype, divisor=alpha)
    negative = ed.op("Min", [ed.op("Mul", [ed.const(alpha, dtype), expm1]), zero])
    ed.op("Add", [ed.op("Max", [x, zero]), negative], [node.output[0]])
    return Outcome(
        f"Celu -> Max(x, 0) + Min({alpha:.8g}*(Exp(Min(x, 0)/{alpha:.8g}) - 1), 0), within 32 ulp",
        False,
    )


def _softplus(ed: Emitter, x: str, dtype, out: str | None) -> str:
    """Relu(x) + Log(Exp(-|x|) + 1): no inf anywhere, since Exp's argument is <= 0."""
    e = ed.op("Exp", [ed.op("Neg", [ed.op("Abs", [x])])])
    log = ed.op("Log", [ed.op("Add", [e, ed.const(1.0, dtype)])])
    return ed.op("Add", [ed.op("Relu", [x]), log], [out] if out else 1)


def rewrite_softplus(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    _softplus(ed, x, dtype, node.output[0])
    return Outcome(
        "Softplus -> Relu(x) + Log(Exp(-|x|) + 1), within 9.5e-7 absolute "
        "(0 instead of ~e^x for x < -17)",
        False,
    )


def rewrite_mish(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    ed.op("Mul", [x, ed.op("Tanh", [_softplus(ed, x, dtype, None)])], [node.output[0]])
    return Outcome("Mish -> x*Tanh(Relu(x) + Log(Exp(-|x|) + 1)), within 9.5e-7 absolute", False)


def rewrite_gelu(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    if attributes(node).get("approximate", "none") != "tanh":
        return None  # the erf Gelu trains correctly as it is
    x, dtype = node.input[0], ed.facts.float_dtype(node.input[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    cube = ed.op("Mul", [ed.op("Mul", [x, x]), x])
    inner = ed.op("Add", [x, ed.op("Mul", [ed.const(0.044715, dtype), cube])])
    tanh = ed.op("Tanh", [ed.op("Mul", [ed.const(_SQRT_2_OVER_PI, dtype), inner])])
    half_x = ed.op("Mul", [ed.const(0.5, dtype), x])
    ed.op("Mul", [half_x, ed.op("Add", [ed.const(1.0, dtype), tanh])], [node.output[0]])
    return Outcome(
        "Gelu(approximate='tanh') -> its tanh formula in Mul/Add/Tanh (ORT would train it "
        "with the erf Gelu's derivative), within 9.5e-7 absolute",
        False,
    )


def _fold_add(ed: Emitter, inputs: list[str], out: str | None) -> str:
    acc = inputs[0]
    for k, term in enumerate(inputs[1:], start=2):
        acc = ed.op("Add", [acc, term], [out] if out and k == len(inputs) else 1)
    return acc


def rewrite_sum(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    inputs = list(node.input)
    if ed.facts.float_dtype(inputs[0]) is None:
        ed.skip("input type is not float32/float64 (nothing to differentiate)")
        return None
    if len(inputs) == 1:
        ed.op("Identity", inputs, [node.output[0]])
        return Outcome("Sum of one input -> Identity, bit-exact", True)
    _fold_add(ed, inputs, node.output[0])
    return Outcome(f"Sum of {len(inputs)} inputs -> a left fold of Add, bit-exact", True)


def rewrite_mean(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    inputs = list(node.input)
    dtype = ed.facts.float_dtype(inputs[0])
    if dtype is None:
        ed.skip("input type is not float32/float64")
        return None
    if len(inputs) == 1:
        ed.op("Identity", inputs, [node.output[0]])
        return Outcome("Mean of one input -> Identity, bit-exact", True)
    # ORT's kernel multiplies the sum by 1/n computed in the element type.
    inverse = dtype.type(1) / dtype.type(len(inputs))
    ed.op("Mul", [_fold_add(ed, inputs, None), ed.const(inverse, dtype)], [node.output[0]])
    return Outcome(
        f"Mean of {len(inputs)} inputs -> Mul(left fold of Add, 1/{len(inputs)}), bit-exact",
        True,
    )


ELEMENTWISE_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "HardSigmoid": rewrite_hardsigmoid,
    "HardSwish": rewrite_hardswish,
    "PRelu": rewrite_prelu,
    "Softsign": rewrite_softsign,
    "ThresholdedRelu": rewrite_thresholdedrelu,
    "Elu": rewrite_elu,
    "Selu": rewrite_selu,
    "Celu": rewrite_celu,
    "Softplus": rewrite_softplus,
    "Mish": rewrite_mish,
    "Gelu": rewrite_gelu,
    "Sum": rewrite_sum,
    "Mean": rewrite_mean,
}

"""Training rewrites of normalization and dropout layers.

BatchNormalization and Dropout in inference form are rewritten so a training step computes
what inference computes (ORT 1.19.2 would otherwise normalize with batch statistics, and its
Dropout gradient assumes a training-mode dropout). LayerNormalization gets the optional
outputs and bias input its gradient builder reads, and InstanceNormalization (no gradient)
becomes a LayerNormalization.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix._proto import cpu_session
from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes, known

__all__ = ["NORMALIZATION_REWRITES"]

logger = logging.getLogger(__name__)


def _per_channel(ed: Emitter, tensor: str, channels: int, rank: int) -> str:
    """Reshape a [C] tensor to [C, 1, ...] so it broadcasts over an [N, C, ...] input."""
    if rank <= 2:
        return tensor
    return ed.reshape(tensor, [channels] + [1] * (rank - 2))


def _kernel_inv_std(var: np.ndarray, epsilon: float, dtype: np.dtype) -> np.ndarray:
    """1/sqrt(var + eps) exactly as ORT's BatchNormalization kernel computes it.

    The kernel's Eigen code vectorizes sqrt with a fast approximation, so NumPy's correctly
    rounded result differs in the last bit for some channels; BatchNormalization of ones
    with scale 1, bias 0 and mean 0 outputs the kernel's own inv_std."""
    channels = var.size
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    tensors = {
        "scale": np.ones(channels, dtype),
        "bias": np.zeros(channels, dtype),
        "mean": np.zeros(channels, dtype),
        "var": var.astype(dtype).reshape(-1),
    }
    node = helper.make_node("BatchNormalization", ["x", *tensors], ["y"], epsilon=float(epsilon))
    graph = helper.make_graph(
        [node],
        "inv_std",
        [helper.make_tensor_value_info("x", elem, [1, channels])],
        [helper.make_tensor_value_info("y", elem, [1, channels])],
        [numpy_helper.from_array(v, k) for k, v in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    x = np.ones((1, channels), dtype)
    return cpu_session(model, optimize=True).run(None, {"x": x})[0].reshape(-1)


def rewrite_batchnorm(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    attrs = attributes(node)
    if attrs.get("training_mode", 0) or not attrs.get("spatial", 1) or ed.opset < 7:
        ed.skip("not the inference form (training_mode, spatial=0 or opset < 7)")
        return None
    if any(node.output[1:]):
        # ORT's kernel computes batch statistics whenever these outputs are declared.
        ed.skip("it declares the running-statistics outputs (training form)")
        return None
    x, scale, bias, mean, var = node.input[:5]
    dtype = ed.facts.float_dtype(x)
    mean_value, var_value = ed.facts.value(mean), ed.facts.value(var)
    rank = ed.facts.rank(x)
    if dtype is None or mean_value is None or var_value is None or rank is None:
        ed.skip("needs a float input of known rank and constant running statistics")
        return None
    channels = int(mean_value.size)
    # ORT's inference kernel: inv_std = 1/sqrt(var + eps); s = inv_std*scale;
    # t = bias - mean*s; y = x*s + t. The same steps in the same type give the same bits.
    inv_std = _kernel_inv_std(var_value, attrs.get("epsilon", 1e-5), dtype)
    s = ed.op("Mul", [ed.const(inv_std, dtype), scale])
    t = ed.op("Sub", [bias, ed.op("Mul", [ed.const(mean_value.reshape(-1), dtype), s])])
    y = ed.op("Mul", [x, _per_channel(ed, s, channels, rank)])
    ed.op("Add", [y, _per_channel(ed, t, channels, rank)], [node.output[0]])
    return Outcome(
        f"BatchNormalization (inference form) -> x*s + t with s = {scale}/sqrt(var + eps), "
        f"t = {bias} - mean*s: training keeps the running statistics (ORT would use batch "
        "statistics); bit-exact",
        True,
    )


def rewrite_dropout(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    if ed.opset < 7:
        ed.skip("opset < 7 (is_test semantics)")
        return None
    if len(node.output) > 1 and ed.facts.is_used(node.output[1]):
        ed.skip("its mask output is used")
        return None
    if len(node.input) > 2 and node.input[2]:
        training_mode = ed.facts.value(node.input[2])
        if training_mode is None or bool(training_mode.reshape(-1)[0]):
            ed.skip("training_mode is not a constant false")
            return None
    ed.op("Identity", [node.input[0]], [node.output[0]])
    return Outcome(
        "Dropout (inference form) -> Identity: training runs without dropout, as inference "
        "does (ORT's Dropout gradient would rescale by 1/(1-ratio)); bit-exact",
        True,
    )


def rewrite_layernorm(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    outputs = list(node.output) + [""] * (3 - len(node.output))
    inputs = list(node.input) + [""] * (3 - len(node.input))
    if all(outputs) and inputs[2]:
        return None  # already in the form ORT's gradient builder reads
    added = []
    if not inputs[2]:
        dtype, scale_shape = ed.facts.float_dtype(inputs[0]), ed.facts.static_shape(inputs[1])
        if dtype is None or scale_shape is None:
            ed.skip("no bias, and the scale's shape or the input type is unknown")
            return None
        # -0.0: adding it changes no value, not even the sign of a zero.
        inputs[2] = ed.const(np.full(scale_shape, -0.0, dtype), dtype)
        added.append("a -0 bias")
    for k, what in ((1, "mean"), (2, "inv_std_dev")):
        if not outputs[k]:
            outputs[k] = ed.facts.fresh(f"{ed.base}/onnxfix_rewrite/{what}")
            added.append(f"output {what}")
    ed.copy(node, inputs, outputs)
    return Outcome(
        f"LayerNormalization: added {', '.join(added)} (ORT's gradient builder reads them); "
        "bit-exact",
        True,
    )


def rewrite_instancenorm(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, scale, bias = node.input[:3]
    shape, dtype = ed.facts.shape(x), ed.facts.float_dtype(x)
    if ed.opset < 17 or dtype is None or shape is None or len(shape) < 3:
        ed.skip("needs opset >= 17 and a float input of known rank >= 3")
        return None
    spatial = known(shape[2:])
    channels = ed.facts.static_shape(scale)
    if spatial is None or channels is None:
        ed.skip("spatial dims or the scale's shape are not static")
        return None
    size = int(np.prod(spatial))
    epsilon = attributes(node).get("epsilon", 1e-5)
    t = ed.reshape(x, [0, 0, -1])
    ones = ed.const(np.ones(size), dtype)
    zeros = ed.const(np.full(size, -0.0), dtype)
    t = ed.op_multi("LayerNormalization", [t, ones, zeros], 3, axis=-1, epsilon=epsilon)[0]
    static = ed.facts.static_shape(x)
    t = ed.reshape(t, list(static) if static else ed.op("Shape", [x]))
    rank = len(shape)
    t = ed.op("Mul", [t, _per_channel(ed, scale, channels[0], rank)])
    ed.op("Add", [t, _per_channel(ed, bias, channels[0], rank)], [node.output[0]])
    return Outcome(
        "InstanceNormalization -> LayerNormalization over each channel's spatial values, "
        "then scale and bias; within 2.5e-7 of max|y| (reduction order)",
        False,
    )


NORMALIZATION_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "BatchNormalization": rewrite_batchnorm,
    "Dropout": rewrite_dropout,
    "LayerNormalization": rewrite_layernorm,
    "InstanceNormalization": rewrite_instancenorm,
}

"""Training rewrites of ops that change spatial size: Resize/Upsample and ConvTranspose have
no CPU gradient kernel in ORT 1.19.2 (ResizeGrad and ConvTransposeGrad are CUDA only), and
DepthToSpace/SpaceToDepth have no gradient at all.

Resize is measured rather than re-derived: the same node (same op, opset and attributes) is run
by ONNX Runtime on an iota (nearest: the source index of every output index) or on one-hot
inputs (linear/cubic: the interpolation matrix), one axis at a time. That captures every
coordinate mode, rounding rule, cubic coefficient and antialias setting exactly as the
runtime implements them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix._proto import cpu_session
from onnxfix.training.rewrites.convolution import emit_conv
from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes, known

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["RESAMPLING_REWRITES"]

logger = logging.getLogger(__name__)

_INT64_MAX = np.iinfo(np.int64).max
# Input lengths tried to show a nearest Resize with a dynamic length is floor(i/s).
_DYNAMIC_PROBE_LENGTHS = tuple(range(1, 33))


# ---------------------------------------------------------------------------- measuring
def _resize_probe(
    ed: Emitter,
    node: onnx.NodeProto,
    input_dims: list,
    *,
    scales: list[float] | None = None,
    sizes: list[int] | None = None,
) -> onnx.ModelProto:
    """A model of one copy of ``node`` reading ``x`` (``input_dims``) with the given scales
    or sizes; every other attribute is the node's own."""
    op, opset, inits = node.op_type, ed.opset, []

    def tensor(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    extra = {}
    scales_t = np.array(scales if scales is not None else [], np.float32)
    if op == "Upsample" and opset < 9:
        inputs, extra["scales"] = ["x"], [float(v) for v in scales_t]
    elif op == "Upsample" or opset == 10:
        inputs = ["x", tensor("scales", scales_t)]
    else:
        roi = tensor("roi", np.zeros(0, np.float32)) if opset < 13 else ""
        if scales is not None:
            inputs = ["x", roi, tensor("scales", scales_t)]
        else:
            empty = tensor("scales", scales_t) if opset < 13 else ""
            inputs = ["x", roi, empty, tensor("sizes", np.array(sizes, np.int64))]
    probe = helper.make_node(op, inputs, ["y"])
    probe.attribute.extend(a for a in node.attribute if a.name not in extra)
    probe.attribute.extend(helper.make_attribute(k, v) for k, v in extra.items())
    graph = helper.make_graph(
        [probe],
        "resize_probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = max(4, helper.find_min_ir_version_for(opsets))
    return model


def _probe_session(
    ed: Emitter, node: onnx.NodeProto, dims: list, target: dict[str, list]
) -> onnxruntime.InferenceSession:
    """A session of :func:`_resize_probe`, with ONNX Runtime's default optimisations (a lone
    Resize has nothing to fuse)."""
    return cpu_session(_resize_probe(ed, node, dims, **target), optimize=True)


def _axis_target(rank: int, axis: int, length, scale, size, batch: int = 1):
    """Input dims and the scales/sizes that resize only ``axis`` of a [batch, 1, ...] input."""
    dims = [1] * rank
    dims[0], dims[axis] = batch, length
    if scale is not None:
        scales = [1.0] * rank
        scales[axis] = scale
        return dims, {"scales": scales}
    sizes = list(dims)
    sizes[axis] = size
    return dims, {"sizes": sizes}


def _nearest_map(ed: Emitter, node: onnx.NodeProto, rank: int, axis: int, length: int, scale, size):
    """Source index of each output index along ``axis`` (resize of an iota)."""
    dims, target = _axis_target(rank, axis, length, scale, size)
    iota = np.arange(length, dtype=np.float32).reshape(dims)
    y = _probe_session(ed, node, dims, target).run(None, {"x": iota})[0]
    return [int(v) for v in y.reshape(-1)]


def _nearest_is_floor_for_any_length(ed: Emitter, node, rank: int, axis: int, scale) -> bool:
    """For a dynamic length: is the map floor(i/s) at every length tried?"""
    factor = int(scale)
    dims, target = _axis_target(rank, axis, "L", scale, None)
    session = _probe_session(ed, node, dims, target)
    for length in _DYNAMIC_PROBE_LENGTHS:
        shape = list(dims)
        shape[axis] = length
        iota = np.arange(length, dtype=np.float32).reshape(shape)
        y = session.run(None, {"x": iota})[0].reshape(-1)
        if not np.array_equal(y, np.arange(length * factor) // factor):
            return False
    return True


def _interpolation_matrix(ed: Emitter, node, rank: int, axis: int, length: int, scale, size):
    """[length, out]: row k is the resize of the one-hot e_k along ``axis``."""
    dims, target = _axis_target(rank, axis, length, scale, size, batch=length)
    eye = np.zeros(dims, np.float32)
    index = [0] * rank
    for k in range(length):
        index[0] = index[axis] = k
        eye[tuple(index)] = 1.0
    y = _probe_session(ed, node, dims, target).run(None, {"x": eye})[0]
    return y.reshape(length, -1)


# ---------------------------------------------------------------------------- Resize
def _resize_targets(ed: Emitter, node: onnx.NodeProto):
    """(scales, sizes) as constant lists; one is None. Raises LookupError when neither is
    known (a computed scales input, or computed sizes whose output shape is not static)."""
    inputs = list(node.input) + [""] * 4
    if node.op_type == "Upsample" and ed.opset < 9:
        scales = attributes(node).get("scales")
        return ([float(s) for s in scales] if scales else None), None
    if node.op_type == "Upsample" or ed.opset == 10:
        scales_name, sizes_name = inputs[1], ""
    else:
        scales_name, sizes_name = inputs[2], inputs[3]
    if scales_name:
        value = ed.facts.value(scales_name)
        if value is None:
            raise LookupError("its scales are computed in the graph")
        if value.size:
            return [float(v) for v in value.reshape(-1)], None
    if sizes_name:
        value = ed.facts.value(sizes_name)
        if value is not None:
            return None, [int(v) for v in value.reshape(-1)]
        static = ed.facts.static_shape(node.output[0])
        if static is None:
            raise LookupError("its sizes are computed and the output shape is not static")
        return None, list(static)
    raise LookupError("it has neither scales nor sizes")


def rewrite_resize(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    attrs = attributes(node)
    mode = attrs.get("mode", "nearest")
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        ed.skip("tf_crop_and_resize is not handled")
        return None
    if "axes" in attrs or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        ed.skip("the axes / keep_aspect_ratio_policy attributes are not handled")
        return None
    x = node.input[0]
    shape, dtype = ed.facts.shape(x), ed.facts.float_dtype(x)
    if shape is None or dtype is None:
        ed.skip("needs a float input of known rank")
        return None
    try:
        scales, sizes = _resize_targets(ed, node)
    except LookupError as e:
        ed.skip(str(e))
        return None
    rank = len(shape)
    if len(scales or sizes) != rank:
        ed.skip("scales/sizes do not match the input rank")
        return None

    def resized(axis: int) -> bool:
        if scales is not None:
            return scales[axis] != 1.0
        return shape[axis] is None or sizes[axis] != shape[axis]

    axes = [a for a in range(rank) if resized(a)]
    if not axes and mode == "nearest":
        ed.op("Identity", [x], [node.output[0]])
        return Outcome(f"{node.op_type} (nearest) by 1 -> Identity, bit-exact", True)
    if not axes:
        ed.skip("it resizes nothing")
        return None
    if axes[0] == 0:
        ed.skip("it resizes the batch axis")
        return None
    per_axis = {a: (scales[a] if scales else None, sizes[a] if sizes else None) for a in axes}
    if mode == "nearest":
        return _rewrite_nearest(ed, node, shape, axes, per_axis)
    return _rewrite_interpolating(ed, node, shape, axes, per_axis, dtype, mode)


def _rewrite_nearest(ed: Emitter, node, shape, axes, per_axis) -> Outcome | None:
    rank, factors, maps = len(shape), {}, {}
    for a in axes:
        scale, size = per_axis[a]
        if shape[a] is None:
            if scale is None or scale != int(scale) or scale < 1:
                ed.skip("a resized axis is dynamic and its scale is not an integer")
                return None
            if not _nearest_is_floor_for_any_length(ed, node, rank, a, scale):
                ed.skip("a resized axis is dynamic and its map is not floor(i/s)")
                return None
            factors[a] = int(scale)
            continue
        maps[a] = _nearest_map(ed, node, rank, a, shape[a], scale, size)
        factor = len(maps[a]) // shape[a]
        if factor * shape[a] == len(maps[a]) and maps[a] == [
            i // factor for i in range(len(maps[a]))
        ]:
            factors[a] = factor
    out = node.output[0]
    if len(factors) == len(axes):  # every map is floor(i/s): repeat by broadcasting
        positions = [a + 1 + k for k, a in enumerate(axes)]
        t = ed.unsqueeze(node.input[0], positions)
        repeat = [1] * (rank + len(axes))
        for p, a in zip(positions, axes):
            repeat[p] = factors[a]
        t = ed.op("Expand", [t, ed.i64(repeat)])
        scale_all = [factors.get(a, 1) for a in range(rank)]
        ed.reshape(t, ed.scaled_shape(node.input[0], scale_all), output=out)
        how = "Unsqueeze, Expand by " + "x".join(str(factors[a]) for a in axes) + ", Reshape"
    elif len(maps) == len(axes):
        t = node.input[0]
        for k, a in enumerate(axes):
            last = k == len(axes) - 1
            t = ed.op("Gather", [t, ed.i64(maps[a])], [out] if last else 1, axis=a)
        how = "Gather of the measured source indices along axes " + ", ".join(map(str, axes))
    else:
        ed.skip("a dynamic axis is resized by other than floor(i/s)")
        return None
    return Outcome(f"{node.op_type} (nearest) -> {how}, bit-exact", True)


def _rewrite_interpolating(ed: Emitter, node, shape, axes, per_axis, dtype, mode) -> Outcome | None:
    rank = len(shape)
    if not set(axes) <= {rank - 2, rank - 1} or axes[0] < 2:
        ed.skip("%s resize of axes other than the last two is not handled", mode)
        return None
    if any(shape[a] is None for a in axes):
        ed.skip("a resized axis is dynamic")
        return None
    matrices = {a: _interpolation_matrix(ed, node, rank, a, shape[a], *per_axis[a]) for a in axes}
    out, t = node.output[0], node.input[0]
    if rank - 1 in axes:  # [..., W] @ [W, W_out]
        last = rank - 2 not in axes
        t = ed.op("MatMul", [t, ed.const(matrices[rank - 1], dtype)], [out] if last else 1)
    if rank - 2 in axes:  # [H_out, H] @ [..., H, W_out]
        ed.op("MatMul", [ed.const(matrices[rank - 2].T, dtype), t], [out])
    return Outcome(
        f"{node.op_type} ({mode}) -> MatMul by the interpolation matrices ORT's Resize "
        "applies (measured on one-hot inputs), within 2e-7 of max|y|",
        False,
    )


# ---------------------------------------------------------------------------- ConvTranspose
@dataclass(frozen=True)
class _ConvTransposePlan:
    """One ConvTranspose node's geometry, from its weight's static shape and its attributes."""

    x: str
    w: str  # [Cin, Cout/group, *kernel]
    bias: str | None
    output: str
    cin: int
    cout_per_group: int
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    group: int
    pads: list[int]  # all begins, then all ends (0 for auto_pad VALID)
    output_padding: list[int]
    # What the check looks at: forms the rewrite does not handle.
    auto_pad: str
    output_shape: bool  # whether the node has the output_shape attribute
    kernel_shape: list[int]  # the attribute, or the weight's kernel when it has none

    @property
    def n(self) -> int:
        """The number of spatial axes."""
        return len(self.kernel)


def _plan_convtranspose(ed: Emitter, node: onnx.NodeProto) -> _ConvTransposePlan | None:
    """The node's plan; None unless its input is float and its weight's shape static."""
    x, w = node.input[0], node.input[1]
    dtype, w_shape = ed.facts.float_dtype(x), ed.facts.static_shape(w)
    if dtype is None or w_shape is None or len(w_shape) < 3:
        return None
    attrs = attributes(node)
    n = len(w_shape) - 2
    kernel = list(w_shape[2:])
    auto_pad = attrs.get("auto_pad", "NOTSET")
    return _ConvTransposePlan(
        x=x,
        w=w,
        bias=node.input[2] if len(node.input) > 2 and node.input[2] else None,
        output=node.output[0],
        cin=w_shape[0],
        cout_per_group=w_shape[1],
        kernel=kernel,
        strides=list(attrs.get("strides", [1] * n)),
        dilations=list(attrs.get("dilations", [1] * n)),
        group=int(attrs.get("group", 1)),
        pads=list(attrs.get("pads", [0] * 2 * n)) if auto_pad == "NOTSET" else [0] * 2 * n,
        output_padding=list(attrs.get("output_padding", [0] * n)),
        auto_pad=auto_pad,
        output_shape="output_shape" in attrs,
        kernel_shape=list(attrs.get("kernel_shape", kernel)),
    )


def _unhandled(plan: _ConvTransposePlan) -> str | None:
    """Why the rewrite leaves the planned node as it is, or None."""
    if plan.auto_pad not in ("NOTSET", "VALID") or plan.output_shape:
        return "auto_pad SAME_* and output_shape are not handled"
    if plan.kernel_shape != plan.kernel:
        return "kernel_shape differs from the weight's shape"
    return None


def _insert_zeros(ed: Emitter, plan: _ConvTransposePlan) -> str:
    """The input with s-1 zeros after every element along each axis of stride s > 1."""
    t, n, strides = plan.x, plan.n, plan.strides
    strided = [i for i in range(n) if strides[i] > 1]
    if strided:
        positions = [2 + i + 1 + k for k, i in enumerate(strided)]
        t = ed.unsqueeze(t, positions)
        ends = [0] * (2 + n + len(strided))
        for p, i in zip(positions, strided):
            ends[p] = strides[i] - 1
        t = ed.pad(t, [0] * len(ends) + ends)
        t = ed.reshape(t, ed.scaled_shape(plan.x, [1, 1] + strides))
    return t


def _pad_border(ed: Emitter, plan: _ConvTransposePlan, t: str) -> str:
    """``t`` with the full-correlation border less the ConvTranspose pads: padded where that
    is positive, cropped where negative."""
    n, kernel, dilations, pads = plan.n, plan.kernel, plan.dilations, plan.pads
    extra, strides = plan.output_padding, plan.strides
    begins = [dilations[i] * (kernel[i] - 1) - pads[i] for i in range(n)]
    finals = [
        dilations[i] * (kernel[i] - 1) - pads[n + i] + extra[i] - (strides[i] - 1) for i in range(n)
    ]
    if any(v > 0 for v in begins + finals):
        t = ed.pad(t, [0, 0] + [max(v, 0) for v in begins] + [0, 0] + [max(v, 0) for v in finals])
    cropped = [i for i in range(n) if begins[i] < 0 or finals[i] < 0]
    if cropped:
        starts = [max(-begins[i], 0) for i in cropped]
        stops = [finals[i] if finals[i] < 0 else _INT64_MAX for i in cropped]
        t = ed.slice(t, starts, stops, [2 + i for i in cropped])
    return t


def _conv_weight(ed: Emitter, plan: _ConvTransposePlan) -> str:
    """The weight as the Conv reads it, computed in the graph so the original initializer
    trains: [Cin, Cout/g, k...] -> [Cout, Cin/g, k...] (per group), every kernel axis reversed."""
    n, kernel, group, w = plan.n, plan.kernel, plan.group, plan.w
    cin, cout_per_group = plan.cin, plan.cout_per_group
    spatial_perm = list(range(3, 3 + n))
    if group == 1:
        wc = ed.op("Transpose", [w], perm=[1, 0] + [p - 1 for p in spatial_perm])
    else:
        wc = ed.reshape(w, [group, cin // group, cout_per_group] + kernel)
        wc = ed.op("Transpose", [wc], perm=[0, 2, 1] + spatial_perm)
        wc = ed.reshape(wc, [group * cout_per_group, cin // group] + kernel)
    for i in range(n):
        if kernel[i] > 1:
            wc = ed.op("Gather", [wc, ed.i64(list(range(kernel[i] - 1, -1, -1)))], axis=2 + i)
    return wc


def rewrite_convtranspose(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    """ConvTranspose as a Conv (ORT 1.19.2 has no CPU ConvTransposeGrad).

    Plan the geometry from the weight's static shape and the attributes; check the node is in
    a form handled (no SAME_* auto_pad, no output_shape, kernel_shape that of the weight);
    emit zero insertion along the strided axes, the border padded or cropped, the weight
    regrouped and flipped in the graph, and a stride-1, unpadded Conv of the two.
    """
    plan = _plan_convtranspose(ed, node)
    if plan is None:
        ed.skip("needs a float input and a weight of static shape")
        return None
    problem = _unhandled(plan)
    if problem is not None:
        ed.skip(problem)
        return None
    t = _pad_border(ed, plan, _insert_zeros(ed, plan))
    wc = _conv_weight(ed, plan)
    emit_conv(
        ed,
        t,
        wc,
        plan.bias,
        plan.output,
        dilations=plan.dilations,
        group=plan.group,
        kernel_shape=plan.kernel,
        strides=[1] * plan.n,
        pads=[0] * 2 * plan.n,
    )
    return Outcome(
        f"ConvTranspose -> zero insertion, padding and Conv with {plan.w} regrouped and flipped "
        "in the graph (it still trains); within 4e-7 of max|y| (summation order)",
        False,
    )


# ---------------------------------------------------------------------------- depth <-> space
def _static_chw(ed: Emitter, x: str) -> tuple[int, int, int] | None:
    shape = ed.facts.shape(x)
    chw = known(shape[1:]) if shape is not None and len(shape) == 4 else None
    if chw is None:
        return None
    c, h, w = chw
    return c, h, w


def rewrite_depthtospace(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    chw = _static_chw(ed, node.input[0])
    if chw is None:
        ed.skip("needs a 4-D input with static C, H, W")
        return None
    (c, h, w), attrs = chw, attributes(node)
    b, mode = int(attrs["blocksize"]), attrs.get("mode", "DCR")
    if mode == "DCR":
        t = ed.reshape(node.input[0], [-1, b, b, c // (b * b), h, w])
        t = ed.op("Transpose", [t], perm=[0, 3, 4, 1, 5, 2])
    else:
        t = ed.reshape(node.input[0], [-1, c // (b * b), b, b, h, w])
        t = ed.op("Transpose", [t], perm=[0, 1, 4, 2, 5, 3])
    ed.reshape(t, [-1, c // (b * b), h * b, w * b], output=node.output[0])
    return Outcome(f"DepthToSpace ({mode}) -> Reshape, Transpose, Reshape; bit-exact", True)


def rewrite_spacetodepth(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    chw = _static_chw(ed, node.input[0])
    if chw is None:
        ed.skip("needs a 4-D input with static C, H, W")
        return None
    (c, h, w), b = chw, int(attributes(node)["blocksize"])
    t = ed.reshape(node.input[0], [-1, c, h // b, b, w // b, b])
    t = ed.op("Transpose", [t], perm=[0, 3, 5, 1, 2, 4])
    ed.reshape(t, [-1, c * b * b, h // b, w // b], output=node.output[0])
    return Outcome("SpaceToDepth -> Reshape, Transpose, Reshape; bit-exact", True)


RESAMPLING_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "Resize": rewrite_resize,
    "Upsample": rewrite_resize,
    "ConvTranspose": rewrite_convtranspose,
    "DepthToSpace": rewrite_depthtospace,
    "SpaceToDepth": rewrite_spacetodepth,
}

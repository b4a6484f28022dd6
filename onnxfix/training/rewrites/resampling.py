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
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes, ort_session

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
    y = ort_session(_resize_probe(ed, node, dims, **target)).run(None, {"x": iota})[0]
    return [int(v) for v in y.reshape(-1)]


def _nearest_is_floor_for_any_length(ed: Emitter, node, rank: int, axis: int, scale) -> bool:
    """For a dynamic length: is the map floor(i/s) at every length tried?"""
    factor = int(scale)
    dims, target = _axis_target(rank, axis, "L", scale, None)
    session = ort_session(_resize_probe(ed, node, dims, **target))
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
    y = ort_session(_resize_probe(ed, node, dims, **target)).run(None, {"x": eye})[0]
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
        if value is None:
            value = ed.facts.static_shape(node.output[0])
            if value is None:
                raise LookupError("its sizes are computed and the output shape is not static")
        return None, [int(v) for v in np.asarray(value).reshape(-1)]
    raise LookupError("it has neither scales nor sizes")


def rewrite_resize(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    attrs = attributes(node)
    mode = attrs.get("mode", "nearest")
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return ed.skip("tf_crop_and_resize is not handled")
    if "axes" in attrs or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return ed.skip("the axes / keep_aspect_ratio_policy attributes are not handled")
    x = node.input[0]
    shape, dtype = ed.facts.shape(x), ed.facts.float_dtype(x)
    if shape is None or dtype is None:
        return ed.skip("needs a float input of known rank")
    try:
        scales, sizes = _resize_targets(ed, node)
    except LookupError as e:
        return ed.skip(str(e))
    rank = len(shape)
    if len(scales or sizes) != rank:
        return ed.skip("scales/sizes do not match the input rank")

    def resized(axis: int) -> bool:
        if scales is not None:
            return scales[axis] != 1.0
        return shape[axis] is None or sizes[axis] != shape[axis]

    axes = [a for a in range(rank) if resized(a)]
    if not axes and mode == "nearest":
        ed.op("Identity", [x], [node.output[0]])
        return Outcome(f"{node.op_type} (nearest) by 1 -> Identity, bit-exact", True)
    if not axes:
        return ed.skip("it resizes nothing")
    if axes[0] == 0:
        return ed.skip("it resizes the batch axis")
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
                return ed.skip("a resized axis is dynamic and its scale is not an integer")
            if not _nearest_is_floor_for_any_length(ed, node, rank, a, scale):
                return ed.skip("a resized axis is dynamic and its map is not floor(i/s)")
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
        return ed.skip("a dynamic axis is resized by other than floor(i/s)")
    return Outcome(f"{node.op_type} (nearest) -> {how}, bit-exact", True)


def _rewrite_interpolating(ed: Emitter, node, shape, axes, per_axis, dtype, mode) -> Outcome | None:
    rank = len(shape)
    if not set(axes) <= {rank - 2, rank - 1} or axes[0] < 2:
        return ed.skip("%s resize of axes other than the last two is not handled", mode)
    if any(shape[a] is None for a in axes):
        return ed.skip("a resized axis is dynamic")
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
def rewrite_convtranspose(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    x, w = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    dtype, w_shape = ed.facts.float_dtype(x), ed.facts.static_shape(w)
    if dtype is None or w_shape is None or len(w_shape) < 3:
        return ed.skip("needs a float input and a weight of static shape")
    attrs = attributes(node)
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or "output_shape" in attrs:
        return ed.skip("auto_pad SAME_* and output_shape are not handled")
    n = len(w_shape) - 2
    kernel = list(w_shape[2:])
    if list(attrs.get("kernel_shape", kernel)) != kernel:
        return ed.skip("kernel_shape differs from the weight's shape")
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    group = int(attrs.get("group", 1))
    pads = (
        list(attrs.get("pads", [0] * 2 * n))
        if attrs.get("auto_pad", "NOTSET") == "NOTSET"
        else [0] * 2 * n
    )
    extra = list(attrs.get("output_padding", [0] * n))
    cin, cout_per_group = w_shape[0], w_shape[1]

    # 1. Zero insertion: s-1 zeros after every input element along each strided axis.
    t = x
    strided = [i for i in range(n) if strides[i] > 1]
    if strided:
        positions = [2 + i + 1 + k for k, i in enumerate(strided)]
        t = ed.unsqueeze(t, positions)
        ends = [0] * (2 + n + len(strided))
        for p, i in zip(positions, strided):
            ends[p] = strides[i] - 1
        t = ed.pad(t, [0] * len(ends) + ends)
        t = ed.reshape(t, ed.scaled_shape(x, [1, 1] + strides))
    # 2. Border: the full-correlation padding minus the ConvTranspose pads; negative -> crop.
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
    # 3. Weights, kept in the graph so the original initializer trains: [Cin, Cout/g, k...]
    #    -> [Cout, Cin/g, k...] (per group), then every kernel axis reversed.
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
    # 4. A stride-1, unpadded Conv.
    ed.op(
        "Conv",
        [t, wc] + ([bias] if bias else []),
        [node.output[0]],
        dilations=dilations,
        group=group,
        kernel_shape=kernel,
        strides=[1] * n,
        pads=[0] * 2 * n,
    )
    return Outcome(
        f"ConvTranspose -> zero insertion, padding and Conv with {w} regrouped and flipped "
        "in the graph (it still trains); within 4e-7 of max|y| (summation order)",
        False,
    )


# ---------------------------------------------------------------------------- depth <-> space
def _static_chw(ed: Emitter, x: str) -> tuple[int, int, int] | None:
    shape = ed.facts.shape(x)
    if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])


def rewrite_depthtospace(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    chw = _static_chw(ed, node.input[0])
    if chw is None:
        return ed.skip("needs a 4-D input with static C, H, W")
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
        return ed.skip("needs a 4-D input with static C, H, W")
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

"""Training rewrites of data-movement and pooling ops: a Split with an unused output (ORT
1.19.2 trains it with a silently wrong gradient), reflect/edge/wrap Pad (its Pad gradient is
constant-mode only) and GlobalMaxPool (no gradient)."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx

from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes, known

__all__ = ["TENSOR_REWRITES", "pad_indices"]

logger = logging.getLogger(__name__)


def rewrite_split(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    used = [ed.facts.is_used(o) for o in node.output]
    if all(used) or not any(used):
        return None  # every output has a gradient (or the node is dead): trains correctly
    x, attrs = node.input[0], attributes(node)
    shape = ed.facts.shape(x)
    axis = int(attrs.get("axis", 0))
    if axis < 0:
        if shape is None:
            ed.skip("negative axis and unknown rank")
            return None
        axis += len(shape)
    if ed.opset >= 13 and len(node.input) > 1 and node.input[1]:
        split = ed.facts.value(node.input[1])
        if split is None:
            ed.skip("its split sizes are computed in the graph")
            return None
        sizes = [int(v) for v in split.reshape(-1)]
    elif ed.opset < 13 and "split" in attrs:
        sizes = [int(v) for v in attrs["split"]]
    else:
        length, n = (shape[axis] if shape else None), len(node.output)
        if length is None:
            ed.skip("equal split of an axis of unknown length")
            return None
        chunk = -(-length // n)  # opset 18 num_outputs: the last chunk may be smaller
        if ed.opset < 18 and length % n:
            ed.skip("the axis does not split evenly")
            return None
        sizes = [chunk] * (n - 1) + [length - chunk * (n - 1)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    kept = []
    for k, output in enumerate(node.output):
        if used[k]:
            ed.slice(x, [starts[k]], [starts[k + 1]], [axis], output=output)
            kept.append(str(k))
    return Outcome(
        f"Split with unused outputs -> Slice for output(s) {', '.join(kept)} (ORT's Split "
        "gradient is wrong when an output is unused); bit-exact",
        True,
    )


def pad_indices(mode: str, length: int, before: int, after: int) -> list[int]:
    """Source index of every output index of a 1-D reflect/edge/wrap Pad. Negative pads crop
    first (as ORT does): a wrap then takes its values from the cropped range."""
    start = max(-before, 0)
    length -= start + max(-after, 0)
    before, after = max(before, 0), max(after, 0)
    out = []
    period = 2 * (length - 1)
    for j in range(-before, length + after):
        if mode == "edge":
            i = min(max(j, 0), length - 1)
        elif mode == "wrap":
            i = j % length
        elif period == 0:
            i = 0
        else:  # reflect: mirror without repeating the edge
            i = j % period
            i = period - i if i >= length else i
        out.append(start + i)
    return out


def rewrite_pad(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    attrs = attributes(node)
    mode = attrs.get("mode", "constant")
    if mode not in ("reflect", "edge", "wrap"):
        return None  # constant padding has a gradient
    x = node.input[0]
    shape = ed.facts.shape(x)
    if shape is None:
        ed.skip("unknown input rank")
        return None
    if ed.opset < 11:
        pads = attrs.get("pads", attrs.get("paddings"))
    else:
        value = ed.facts.value(node.input[1])
        pads = None if value is None else value.reshape(-1).tolist()
    axes = list(range(len(shape)))
    if len(node.input) > 3 and node.input[3]:
        value = ed.facts.value(node.input[3])
        if value is None:
            ed.skip("its axes are computed in the graph")
            return None
        axes = [int(a) % len(shape) for a in value.reshape(-1)]
    if pads is None or len(pads) != 2 * len(axes):
        ed.skip("its pads are not constant")
        return None
    work = [(a, int(pads[k]), int(pads[k + len(axes)])) for k, a in enumerate(axes)]
    work = [(a, p, q) for a, p, q in work if p or q]
    lengths = known([shape[a] for a, _, _ in work])
    if lengths is None:
        ed.skip("a padded axis has a dynamic length")
        return None
    t = x
    if not work:
        ed.op("Identity", [x], [node.output[0]])
    for k, ((a, p, q), length) in enumerate(zip(work, lengths)):
        index = ed.i64(pad_indices(mode, length, p, q))
        t = ed.op("Gather", [t, index], [node.output[0]] if k == len(work) - 1 else 1, axis=a)
    return Outcome(f"Pad ({mode}) -> Gather along each padded axis; bit-exact", True)


def rewrite_globalmaxpool(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    shape = ed.facts.shape(node.input[0])
    spatial = known(shape[2:]) if shape is not None and len(shape) >= 3 else None
    if spatial is None:
        ed.skip("needs static spatial dims")
        return None
    kernel = list(spatial)
    ed.op("MaxPool", [node.input[0]], [node.output[0]], kernel_shape=kernel)
    return Outcome(f"GlobalMaxPool -> MaxPool(kernel_shape={kernel}); bit-exact", True)


TENSOR_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "Split": rewrite_split,
    "Pad": rewrite_pad,
    "GlobalMaxPool": rewrite_globalmaxpool,
}

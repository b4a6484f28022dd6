"""Training rewrite of 1-D convolutions: a 2-D Conv over an added unit axis.

onnxruntime-web 1.19.2 (its WebAssembly training build) mis-trains 1-D Convs: measured on the
corpus' conv1d export (tests/data/torch, a grouped Conv1d among plain ones), a training step
stops with "Tensor type mismatch" when a 1-D Conv's weight is frozen and its bias trains, and
with "Shape mismatch attempting to re-use buffer" when a grouped one's weight is frozen; ORT's
own generate_artifacts output fails the same way. The 2-D forms of the same convs train there.
Native ONNX Runtime trains both forms (MLAS runs a 1-D conv as a 2-D one with height 1, so the
outputs are the same bits), and one set of artifacts serves every runtime, so every 1-D Conv
of the training graph is written as Unsqueeze, 2-D Conv, Squeeze; the weight stays the
original initializer, unsqueezed in the graph, so it still trains or stays frozen.
"""

from __future__ import annotations

from typing import Any, Callable

import onnx

from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes

__all__ = ["CONVOLUTION_REWRITES", "emit_conv"]


def emit_conv(ed: Emitter, x: str, w: str, bias: str | None, output: str, **attrs: Any) -> None:
    """A Conv of ``x`` and ``w`` into ``output``; 1-D (``kernel_shape`` of one value, or a
    weight of rank 3) as a 2-D Conv over an added last axis."""
    if _spatial_axes(ed, w, attrs) != 1:
        ed.op("Conv", [x, w] + ([bias] if bias else []), [output], **attrs)
        return
    lifted: dict[str, Any] = {k: v for k, v in attrs.items() if v is not None}
    for key in ("kernel_shape", "strides", "dilations"):
        if key in lifted:
            lifted[key] = [*lifted[key], 1]
    if "pads" in lifted:
        begin, end = lifted["pads"]
        lifted["pads"] = [begin, 0, end, 0]
    x2 = ed.unsqueeze(x, [3])
    w2 = ed.unsqueeze(w, [3])
    y2 = ed.op("Conv", [x2, w2] + ([bias] if bias else []), **lifted)
    ed.squeeze(y2, [3], output)


def _spatial_axes(ed: Emitter, w: str, attrs: dict) -> int | None:
    """How many spatial axes the conv has: its kernel_shape's length, or its weight's rank - 2."""
    kernel = attrs.get("kernel_shape")
    if isinstance(kernel, (list, tuple)):
        return len(kernel)
    rank = ed.facts.rank(w)
    return None if rank is None else rank - 2


def rewrite_conv(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    if len(node.input) < 2:
        return None
    attrs = attributes(node)
    if _spatial_axes(ed, node.input[1], attrs) != 1:
        return None  # 2-D and 3-D convs train everywhere as they are
    if ed.facts.rank(node.input[0]) not in (None, 3):
        ed.skip("its input is not of rank 3")
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    emit_conv(ed, node.input[0], node.input[1], bias, node.output[0], **attrs)
    return Outcome(
        "Conv 1-D -> Unsqueeze, 2-D Conv over a unit axis, Squeeze (onnxruntime-web 1.19.2 "
        "mis-trains 1-D convs); bit-exact",
        True,
    )


CONVOLUTION_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "Conv": rewrite_conv,
}

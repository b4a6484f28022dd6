"""Training rewrites of Conv: auto_pad SAME_* as explicit pads, 1-D convs as 2-D ones.

ONNX Runtime 1.19.2's ConvGrad does not apply auto_pad: measured (tests/training/
test_rewrites.py), a 2-D Conv with auto_pad SAME_UPPER and a kernel of 4 trains with a weight
gradient 97% off its finite-difference value, and with SAME_LOWER or an odd kernel with no
gradient at all, silently. The padding SAME_* means is written out as ``pads`` from the static
shapes (a Conv whose shapes are not static is left as it is, and logged).

onnxruntime-web 1.19.2 (its WebAssembly training build) mis-trains 1-D Convs: measured on the
corpus' conv1d export (tests/data/torch, a grouped Conv1d among plain ones), a training step
stops with "Tensor type mismatch" when a 1-D Conv's weight is frozen and its bias trains, and
with "Shape mismatch attempting to re-use buffer" when a grouped one's weight is frozen; ORT's
own generate_artifacts output fails the same way. The 2-D forms of the same convs train there.
Native ONNX Runtime trains both forms, to float32 summation order (bit-identical on most
shapes; 1.2e-7 of max|y| on a SAME_UPPER kernel of 4), and one set of artifacts serves every
runtime, so every 1-D Conv of the training graph is written as Unsqueeze, 2-D Conv, Squeeze;
the weight stays the original initializer, unsqueezed in the graph, so it still trains or stays
frozen.
"""

from __future__ import annotations

from typing import Any, Callable

import onnx

from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes

__all__ = ["CONVOLUTION_REWRITES", "emit_conv"]


def emit_conv(ed: Emitter, x: str, w: str, bias: str | None, output: str, **attrs: Any) -> None:
    """A Conv of ``x`` and ``w`` into ``output`` in the forms ONNX Runtime trains right
    everywhere: auto_pad SAME_* as explicit pads (when the shapes are static), and 1-D
    (``kernel_shape`` of one value, or a weight of rank 3) as a 2-D Conv over an added axis."""
    lifted: dict[str, Any] = {k: v for k, v in attrs.items() if v is not None}
    same = _same_pads(ed, x, w, lifted)
    if same is not None:
        lifted.pop("auto_pad")
        lifted["pads"] = same
    if _spatial_axes(ed, w, attrs) != 1:
        ed.op("Conv", [x, w] + ([bias] if bias else []), [output], **lifted)
        return
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


def _auto_pad(attrs: dict) -> str:
    value = attrs.get("auto_pad", "NOTSET")
    return value.decode() if isinstance(value, bytes) else str(value)


def _same_pads(ed: Emitter, x: str, w: str, attrs: dict) -> list[int] | None:
    """SAME_UPPER / SAME_LOWER as explicit ``pads`` (all begins, then all ends); None for
    other paddings, or when the lengths are not static."""
    mode = _auto_pad(attrs)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    x_shape, w_shape = ed.facts.static_shape(x), ed.facts.static_shape(w)
    if x_shape is None or w_shape is None:
        return None
    n = len(w_shape) - 2
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    begins, ends = [], []
    for length, kernel, stride, dilation in zip(x_shape[2:], w_shape[2:], strides, dilations):
        total = max((-(-length // stride) - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
        small = total // 2
        begin = small if mode == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _spatial_axes(ed: Emitter, w: str, attrs: dict) -> int | None:
    """How many spatial axes the conv has: its kernel_shape's length, or its weight's rank - 2."""
    kernel = attrs.get("kernel_shape")
    if isinstance(kernel, (list, tuple)):
        return len(kernel)
    rank = ed.facts.rank(w)
    return None if rank is None else rank - 2


def rewrite_conv(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    """A Conv with auto_pad SAME_* with explicit pads; a 1-D Conv as a 2-D one."""
    if len(node.input) < 2:
        return None
    attrs = attributes(node)
    one_d = _spatial_axes(ed, node.input[1], attrs) == 1
    same = _auto_pad(attrs).startswith("SAME")
    if not one_d and not same:
        return None  # trains everywhere as it is
    if one_d and ed.facts.rank(node.input[0]) not in (None, 3):
        ed.skip("its input is not of rank 3")
        return None
    if same and _same_pads(ed, node.input[0], node.input[1], attrs) is None:
        ed.skip("auto_pad %s needs static shapes", _auto_pad(attrs))
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    emit_conv(ed, node.input[0], node.input[1], bias, node.output[0], **attrs)
    what = []
    if same:
        what.append(
            f"auto_pad {_auto_pad(attrs)} -> explicit pads (ONNX Runtime 1.19.2's ConvGrad "
            "ignores auto_pad: a wrong or zero gradient)"
        )
    if one_d:
        what.append(
            "1-D -> Unsqueeze, 2-D Conv over a unit axis, Squeeze (onnxruntime-web 1.19.2 "
            "mis-trains 1-D convs)"
        )
    return Outcome(f"Conv {'; '.join(what)}; within 4e-7 of max|y| (summation order)", False)


CONVOLUTION_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "Conv": rewrite_conv,
}

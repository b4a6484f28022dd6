"""Fit a user's kernel array to a conv weight's shape, and cast it to the weight's dtype.

Weight layouts: Conv is (O, I/group, *spatial); ConvTranspose is (I, O/group, *spatial).
The accepted kernel shapes (README, "Kernel broadcasting rules"):

* exactly the weight's shape: used as is;
* ``spatial``: the same kernel in every (output, input) slice;
* ``(O, *spatial)``: output channel ``o`` gets kernel ``k[o]`` across all its inputs;
* ``(O, I/group, *spatial)`` for Conv, in the weight's own layout.

With ``channels`` (``--channels 0:4``) only those output channels change, the rest keep their
values, and the per-channel forms count only the chosen channels: a bank of K filters fills K
channels.
"""

from __future__ import annotations

import numpy as np

from onnxfix.channels import from_rows_view, rows_view
from onnxfix.errors import KernelShapeError, param

__all__ = ["parse_channels", "fit_kernel", "cast_kernel"]


def parse_channels(text: str, out_channels: int, layer: str) -> np.ndarray:
    """Output-channel indices from ``'0:4'``, ``'3'``, ``'0,2,5'`` or ``'::2'``."""
    indices: list[int] = []

    def out_of_range(value: int, end: str = "") -> KernelShapeError:
        return KernelShapeError(
            f"{param('channels')} {text!r}: {'channel ' if not end else ''}{value} is out of "
            f"range for layer {layer!r}, which has {out_channels} output channels (0 to "
            f"{out_channels - 1}{end})"
        )

    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                bounds = [int(b) if b.strip() else None for b in part.split(":")]
                if len(bounds) > 3:
                    raise ValueError
                # A slice clamps its bounds: check them, so 0:999 is refused as 999 is.
                for bound in bounds[:2]:
                    if bound is not None and not -out_channels <= bound <= out_channels:
                        raise out_of_range(
                            bound, f"; a range like 0:{out_channels} ends at {out_channels}"
                        )
                if len(bounds) == 3 and bounds[2] == 0:
                    raise KernelShapeError(
                        f"{param('channels')} {text!r}: a range's step cannot be 0; write e.g. "
                        f"'0:{out_channels}:2' for every other channel"
                    )
                indices.extend(range(out_channels)[slice(*bounds)])
            else:
                index = int(part)
                if not -out_channels <= index < out_channels:
                    raise out_of_range(index)
                indices.append(index % out_channels)
        except ValueError:
            raise KernelShapeError(
                f"{param('channels')} {text!r} is not a channel list; write e.g. '0:4', '5' or '0,2,7'"
            ) from None
    chosen = np.unique(np.array(indices, dtype=np.int64))
    if chosen.size == 0:
        raise KernelShapeError(
            f"{param('channels')} {text!r} selects no output channel of layer {layer!r}, which has "
            f"{out_channels} output channels"
        )
    if len(chosen) != len(indices):
        raise KernelShapeError(f"{param('channels')} {text!r} names a channel more than once")
    return np.array(indices, dtype=np.int64)


def fit_kernel(
    kernel: np.ndarray,
    current: np.ndarray,
    *,
    layer: str,
    op: str,
    group: int,
    channels: np.ndarray | None = None,
    source: str = "the kernel",
) -> np.ndarray:
    """The new weight: ``current`` with ``kernel`` broadcast into it by the rules above.

    Returns a float64 array of ``current``'s shape; casting is :func:`cast_kernel`'s job.
    """
    shape = tuple(current.shape)
    transpose = op == "ConvTranspose"
    # A new array either way: astype copies, and the ConvTranspose regrouping copies again.
    view = rows_view(current.astype(np.float64), op=op, role="weight", group=group)
    out_channels, per_group = view.shape[:2]
    spatial = view.shape[2:]
    chosen = np.arange(out_channels) if channels is None else channels
    k = len(chosen)
    kshape = tuple(kernel.shape)

    if channels is None and kshape == shape:
        return np.array(kernel, dtype=np.float64)
    if kshape == spatial:
        view[chosen] = kernel
    elif kshape == (k, *spatial):
        view[chosen] = kernel[:, None]
    elif kshape == (k, per_group, *spatial) and (not transpose or channels is not None):
        view[chosen] = kernel
    else:
        raise KernelShapeError(
            _shape_message(
                layer, shape, spatial, k, per_group, kshape, source, transpose, channels is not None
            )
        )
    if transpose:
        return from_rows_view(view, shape, op=op, role="weight", group=group)
    return view


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_message(layer, shape, spatial, k, per_group, kshape, source, transpose, restricted):
    accepted = [_fmt(spatial), _fmt((k, *spatial))]
    if restricted:
        accepted.append(_fmt((k, per_group, *spatial)))
    elif transpose:
        accepted.append(_fmt(shape))
    else:
        accepted.append(_fmt(shape))
    what = f"{k} chosen output channels" if restricted else f"{k} output channels"
    return (
        f"layer {layer!r} expects a kernel of shape {_fmt(shape)} ({what}); {source} holds "
        f"{_fmt(kshape)}. Give a {', '.join(accepted[:-1])} or {accepted[-1]} array."
    )


_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def cast_kernel(values: np.ndarray, dtype: np.dtype, *, layer: str, source: str) -> np.ndarray:
    """``values`` in the weight's dtype; NaN, Inf and values the dtype cannot hold are refused."""
    name = np.dtype(dtype).name
    if name not in _FLOAT_DTYPES:
        raise KernelShapeError(
            f"layer {layer!r} has a {name} weight; onnxfix sets float16, bfloat16, float32 and "
            "float64 weights only"
        )
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise KernelShapeError(
            f"{source} for layer {layer!r} holds {values[tuple(bad)]} at index {tuple(int(i) for i in bad)}; "
            "kernels must be finite"
        )
    with np.errstate(over="ignore"):
        cast = values.astype(dtype)
    # Overflow shows up as Inf after the cast (rounding included), whatever the dtype.
    if not np.all(np.isfinite(cast.astype(np.float64))):
        peak = float(np.max(np.abs(values)))
        raise KernelShapeError(
            f"{source} for layer {layer!r} holds {peak:g}, beyond the largest {name} value; "
            "scale the kernel down"
        )
    return cast

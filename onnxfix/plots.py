"""Pictures: conv kernels as tile grids (``show``) and training curves (``train --plot``).

Drawn with matplotlib, an optional dependency (``pip install 'onnxfix[plot]'``), imported only
here and only when a picture is asked for. Each layer's kernels become one mosaic image: a
column of tiles per output channel (16 columns to a band), a row per input channel (their mean
when there are more than 4), 3-D kernels as their middle slice, 1-D ones as a strip; one
blue-white-red scale per layer, symmetric around 0; the fixed channels outlined and labelled
with their source. :func:`draw_kernels` returns where every tile landed in the PNG, so a
caller (the tests) can read the values back from the pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix.channels import rows_view
from onnxfix.errors import OnnxfixError

__all__ = ["KernelLayer", "Tile", "draw_kernels", "draw_history", "COLORMAP", "need_matplotlib"]

COLORMAP = "RdBu_r"
_COLUMNS = 16  # output channels per band
_MANY_INPUTS = 4  # more input channels than this: their mean, one row


class PlotDependencyError(OnnxfixError):
    """matplotlib is not installed."""


def need_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a clear error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotDependencyError(
            "pictures need matplotlib, an optional dependency: pip install 'onnxfix[plot]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class KernelLayer:
    """One conv's weight to draw, as some state of the model holds it."""

    layer: str
    weight: str
    op: str
    group: int
    values: np.ndarray  # the whole weight, in its own layout
    state: str = ""  # "before", "after", or "" for a single picture
    fixed_channels: tuple[int, ...] | None = None  # None with fixed: all of them
    fixed: bool = False
    source: str = ""  # what set-kernel put in (e.g. "sobel-x")


@dataclass(frozen=True)
class Tile:
    """Where one kernel (or the mean over its inputs) is in the PNG: pixel centre of each cell."""

    layer: str
    state: str
    channel: int
    row: int | None  # the input channel, None for the mean over all of them
    fixed: bool
    values: np.ndarray  # the 2-D array drawn
    centres: np.ndarray = field(repr=False)  # (kh, kw, 2): x, y pixel of each cell's centre
    vmax: float = 0.0  # the layer's colour scale: -vmax (blue) to +vmax (red)


def _planes(rows: np.ndarray) -> np.ndarray:
    """(O, I, *k) -> (O, I, h, w): 1-D kernels as a strip, 3-D ones as their middle slice."""
    if rows.ndim == 3:
        return rows[:, :, None, :]
    if rows.ndim == 5:
        return rows[:, :, rows.shape[2] // 2]
    return rows


def _mosaic(
    layer: KernelLayer,
) -> tuple[np.ndarray, list[tuple[int, int | None, int, int, np.ndarray]]]:
    """The layer's mosaic (NaN between tiles) and each tile's channel, row and top-left cell."""
    rows = _planes(
        rows_view(layer.values.astype(np.float64), op=layer.op, role="weight", group=layer.group)
    )
    out_channels, inputs, h, w = rows.shape
    mean = inputs > _MANY_INPUTS
    per_channel = 1 if mean else inputs
    columns = min(out_channels, _COLUMNS)
    bands = -(-out_channels // columns)
    band_height = per_channel * (h + 1) + 1
    mosaic = np.full((bands * band_height, columns * (w + 1) + 1), np.nan)
    placed = []
    for o in range(out_channels):
        band, column = divmod(o, columns)
        for r in range(per_channel):
            tile = rows[o].mean(axis=0) if mean else rows[o, r]
            top, left = band * band_height + 1 + r * (h + 1), 1 + column * (w + 1)
            mosaic[top : top + h, left : left + w] = tile
            placed.append((o, None if mean else r, top, left, tile))
    return mosaic, placed


def draw_kernels(
    layers: Sequence[KernelLayer], path: str | os.PathLike, *, title: str = ""
) -> list[Tile]:
    """Draw ``layers`` (one panel each, in order) into the PNG ``path``; the tiles drawn."""
    plt = need_matplotlib()
    from matplotlib.patches import Rectangle

    mosaics = [_mosaic(layer) for layer in layers]
    scales: dict[str, float] = {}
    for layer in layers:  # one scale per layer, shared by its before and after
        peak = float(np.max(np.abs(layer.values))) if layer.values.size else 0.0
        scales[layer.weight] = max(scales.get(layer.weight, 0.0), peak) or 1.0
    heights = [m.shape[0] for m, _ in mosaics]
    width = max(m.shape[1] for m, _ in mosaics)
    cell = 0.16  # inches per kernel cell
    fig_w = max(6.0, width * cell + 1.5)
    fig_h = sum(h * cell + 0.9 for h in heights) + (0.4 if title else 0.1)
    fig, axes = plt.subplots(
        len(layers), 1, figsize=(fig_w, fig_h), dpi=100, squeeze=False,
        gridspec_kw={"height_ratios": [h + 4 for h in heights]},
    )  # fmt: skip
    cmap = plt.get_cmap(COLORMAP).with_extremes(bad="#eeeeee")
    if title:
        fig.suptitle(title, fontsize=11)
    for ax, layer, (mosaic, placed) in zip(axes[:, 0], layers, mosaics):
        vmax = scales[layer.weight]
        ax.imshow(mosaic, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        h, w = placed[0][4].shape
        state = f"{layer.state}: " if layer.state else ""
        what = f"fixed: {layer.source}" if layer.fixed else "learned"
        if layer.fixed and layer.fixed_channels is not None:
            what = (
                f"channels {_ranges(layer.fixed_channels)} fixed ({layer.source}), the rest learned"
            )
        shape = "x".join(str(d) for d in layer.values.shape)
        ax.set_title(
            f"{state}{layer.layer}  {layer.weight} {shape}  [{what}]  scale ±{vmax:.3g}",
            fontsize=8, loc="left",
        )  # fmt: skip
        for o, r, top, left, _ in placed:
            if _is_fixed(layer, o) and (r is None or r == 0):
                rows_here = 1 if r is None else len([p for p in placed if p[0] == o])
                ax.add_patch(
                    Rectangle(
                        (left - 0.5, top - 0.5), w, rows_here * (h + 1) - 1,
                        fill=False, edgecolor="black", linewidth=1.6,
                    )
                )  # fmt: skip
                ax.text(
                    left + w / 2 - 0.5, top + rows_here * (h + 1) - 1.1, layer.source[:14],
                    fontsize=5, ha="center", va="top",
                )  # fmt: skip
    fig.tight_layout()
    fig.canvas.draw()
    height = fig.canvas.get_width_height()[1]
    tiles = []
    for ax, layer, (_, placed) in zip(axes[:, 0], layers, mosaics):
        vmax = scales[layer.weight]
        for o, r, top, left, values in placed:
            h, w = values.shape
            grid = np.stack(np.meshgrid(np.arange(w) + left, np.arange(h) + top), axis=-1)
            xy = ax.transData.transform(grid.reshape(-1, 2).astype(float)).reshape(h, w, 2)
            xy[..., 1] = height - xy[..., 1]  # display origin is the bottom
            tiles.append(
                Tile(layer.layer, layer.state, o, r, _is_fixed(layer, o), values, xy, vmax)
            )
    _save(fig, Path(path))
    plt.close(fig)
    return tiles


def _is_fixed(layer: KernelLayer, channel: int) -> bool:
    return layer.fixed and (layer.fixed_channels is None or channel in layer.fixed_channels)


def _ranges(channels: Sequence[int]) -> str:
    from onnxfix.channels import channel_ranges

    return channel_ranges(channels)


def _save(fig, path: Path) -> None:
    """Write the PNG under a temporary name beside ``path``, then rename it into place."""
    from onnxfix.outputs import temp_prefix, writing

    tmp = path.parent / f"{temp_prefix(path)}tmp.png"
    try:
        with writing(f"picture {str(path)!r}"):
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def draw_history(epochs: Sequence[Any], steps: Sequence[Any], path: str | os.PathLike) -> None:
    """Loss (and accuracy) curves: per logged step when there are steps, per epoch always."""
    plt = need_matplotlib()
    accuracy = any(e.train_accuracy is not None for e in epochs)
    fig, axes = plt.subplots(
        1, 2 if accuracy else 1, figsize=(10 if accuracy else 6, 3.6), dpi=100, squeeze=False
    )
    ax = axes[0, 0]
    if steps:
        ax.plot(
            [s.epoch - 1 + s.step / s.steps for s in steps],
            [s.loss for s in steps],
            color="#9bb8e0",
            lw=1,
            label="train loss (logged steps)",
        )
    ax.plot(
        [e.epoch for e in epochs],
        [e.train_loss for e in epochs],
        "o-",
        color="#1f5fbf",
        label="train loss (epoch)",
    )
    if any(e.val_loss is not None for e in epochs):
        ax.plot(
            [e.epoch for e in epochs if e.val_loss is not None],
            [e.val_loss for e in epochs if e.val_loss is not None],
            "s-",
            color="#d2452b",
            label="val loss",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if accuracy:
        ax = axes[0, 1]
        ax.plot(
            [e.epoch for e in epochs],
            [e.train_accuracy for e in epochs],
            "o-",
            color="#1f5fbf",
            label="train accuracy",
        )
        if any(e.val_accuracy is not None for e in epochs):
            ax.plot(
                [e.epoch for e in epochs if e.val_accuracy is not None],
                [e.val_accuracy for e in epochs if e.val_accuracy is not None],
                "s-",
                color="#d2452b",
                label="val accuracy",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)

"""Conv and ConvTranspose in plain NumPy (float64), forward and weight gradient.

Independent of onnxfix and ONNX Runtime: the reference the channel-parts tests train against.
Any spatial rank, groups, strides, pads and dilations; a loop over kernel offsets with strided
slices, written from the ONNX operator definitions.
"""

from __future__ import annotations

import numpy as np


def _flat(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def _offsets(kernel: tuple[int, ...]):
    return np.ndindex(*kernel)


def _window(offset, dilations, strides, out_sizes):
    return tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s)
        for o, d, s, n in zip(offset, dilations, strides, out_sizes)
    )


def conv(x, w, b, *, group, strides, pads, dilations):
    """ONNX Conv: x (N, C, *S), w (M, C/group, *K), b (M,) or None."""
    rank = w.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)])
    kernel = w.shape[2:]
    out = tuple(
        (xp.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(rank)
    )
    m, cg = w.shape[:2]
    mg = m // group
    y = np.zeros((x.shape[0], m, *out))
    for offset in _offsets(kernel):
        patch = xp[(slice(None), slice(None), *_window(offset, dilations, strides, out))]
        for g in range(group):
            y[:, g * mg : (g + 1) * mg] += np.einsum(
                "nc...,mc->nm...",
                patch[:, g * cg : (g + 1) * cg],
                w[(slice(g * mg, (g + 1) * mg), slice(None), *offset)],
            )
    if b is not None:
        y += b.reshape(1, m, *[1] * rank)
    return y


def conv_weight_grad(x, dy, w_shape, *, group, strides, pads, dilations):
    """dL/dw of :func:`conv` given dL/dy."""
    rank = len(w_shape) - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)])
    out = dy.shape[2:]
    m, cg = w_shape[:2]
    mg = m // group
    dw = np.zeros(w_shape)
    for offset in _offsets(tuple(w_shape[2:])):
        patch = xp[(slice(None), slice(None), *_window(offset, dilations, strides, out))]
        for g in range(group):
            dw[(slice(g * mg, (g + 1) * mg), slice(None), *offset)] = np.einsum(
                "ncp,nmp->mc",
                _flat(patch[:, g * cg : (g + 1) * cg]),
                _flat(dy[:, g * mg : (g + 1) * mg]),
            )
    return dw


def _full_size(size, kernel, stride, dilation):
    return stride * (size - 1) + dilation * (kernel - 1) + 1


def conv_transpose(x, w, b, *, group, strides, pads, dilations):
    """ONNX ConvTranspose (no output_padding): x (N, C, *S), w (C, M/group, *K)."""
    rank = w.ndim - 2
    c, mg = w.shape[:2]
    cg = c // group
    kernel = w.shape[2:]
    full = tuple(
        _full_size(x.shape[2 + i], kernel[i], strides[i], dilations[i]) for i in range(rank)
    )
    y = np.zeros((x.shape[0], mg * group, *full))
    for offset in _offsets(kernel):
        window = _window(offset, dilations, strides, x.shape[2:])
        for g in range(group):
            y[(slice(None), slice(g * mg, (g + 1) * mg), *window)] += np.einsum(
                "nc...,cm->nm...",
                x[:, g * cg : (g + 1) * cg],
                w[(slice(g * cg, (g + 1) * cg), slice(None), *offset)],
            )
    crop = tuple(slice(pads[i], full[i] - pads[i + rank]) for i in range(rank))
    y = y[(slice(None), slice(None), *crop)]
    if b is not None:
        y += b.reshape(1, -1, *[1] * rank)
    return y


def conv_transpose_weight_grad(x, dy, w_shape, *, group, strides, pads, dilations):
    """dL/dw of :func:`conv_transpose` given dL/dy."""
    rank = len(w_shape) - 2
    c, mg = w_shape[:2]
    cg = c // group
    kernel = tuple(w_shape[2:])
    full = tuple(
        _full_size(x.shape[2 + i], kernel[i], strides[i], dilations[i]) for i in range(rank)
    )
    dfull = np.zeros((dy.shape[0], dy.shape[1], *full))
    crop = tuple(slice(pads[i], full[i] - pads[i + rank]) for i in range(rank))
    dfull[(slice(None), slice(None), *crop)] = dy
    dw = np.zeros(w_shape)
    for offset in _offsets(kernel):
        window = _window(offset, dilations, strides, x.shape[2:])
        for g in range(group):
            dw[(slice(g * cg, (g + 1) * cg), slice(None), *offset)] = np.einsum(
                "ncp,nmp->cm",
                _flat(x[:, g * cg : (g + 1) * cg]),
                _flat(dfull[(slice(None), slice(g * mg, (g + 1) * mg), *window)]),
            )
    return dw


def output_channel_mask(w_shape, channels, *, op, group):
    """A 0/1 array of ``w_shape``: 1 where the weight feeds one of ``channels``."""
    mask = np.zeros(w_shape)
    if op == "Conv":
        mask[list(channels)] = 1
        return mask
    c, mg = w_shape[:2]
    cg = c // group
    for o in channels:  # output channel o = g * M/group + j reads rows of group g, column j
        g, j = divmod(o, mg)
        mask[g * cg : (g + 1) * cg, j] = 1
    return mask

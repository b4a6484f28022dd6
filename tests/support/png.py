"""A small PNG reader (zlib only): 8-bit greyscale, RGB, or RGBA, not interlaced, as
Chromium's screenshots are."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


def read_png(path: Path) -> np.ndarray:
    """The image as uint8 (height, width, 3): RGB, alpha dropped, grey repeated."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    at, idat, header = 8, [], None
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        if (
            zlib.crc32(kind + body)
            != struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0]
        ):
            raise ValueError(f"{path}: chunk {kind!r} fails its CRC")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        at += 12 + length
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise ValueError(f"{path}: depth {depth}, colour type {colour}, interlace {interlace}")
    channels = _CHANNELS[colour]
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    previous = np.zeros(stride, np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + previous) & 0xFF
        elif kind == 1:
            row = (np.cumsum(line.reshape(width, channels), axis=0) & 0xFF).reshape(stride)
        elif kind in (3, 4):  # these depend on the pixel to the left: one at a time (slow;
            # web/drive_page.js asks for screenshots encoded for speed, which use filter 2 only)
            row = np.zeros(stride, np.int32)
            for x in range(stride):
                left = row[x - channels] if x >= channels else 0
                up = previous[x]
                if kind == 3:
                    predictor = (left + up) >> 1
                else:
                    corner = previous[x - channels] if x >= channels else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                row[x] = (line[x] + predictor) & 0xFF
        else:
            raise ValueError(f"{path}: filter type {kind} on row {y}")
        out[y] = row
        previous = row
    image = out.astype(np.uint8).reshape(height, width, channels)
    if channels in (1, 2):
        return np.repeat(image[:, :, :1], 3, axis=2)
    return image[:, :, :3]

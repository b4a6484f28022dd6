"""Copy byte ranges between open files in the kernel, where the OS allows.

Every large write onnxfix makes is a copy of bytes already on disk: the unchanged payloads of
a model (set-kernel), a model's weights into a checkpoint above 2 GB, trained values from the
checkpoint into the exported model. ``os.copy_file_range`` does that without the bytes passing
through Python, then ``os.sendfile``, then a chunked copy.
"""

from __future__ import annotations

import logging
import os

from onnxfix.errors import ModelFileError

__all__ = ["copy_range", "write_at", "ended_early", "CHUNK"]

logger = logging.getLogger(__name__)

CHUNK = 1 << 20  # write buffer and fallback copy chunk: memory stays small whatever the model
# A kernel copy runs as fast as cp only from a 64 KiB boundary in both files (Linux 6.x, ext4,
# warm cache: the file is spliced 16 pages at a time and misaligned rounds get small folios):
# 1 GB took 0.6 s from offset 5828 against 0.42 s from 0. So a payload at the same offset
# modulo this in both files is copied in two calls, the first up to the boundary.
_ALIGN = 1 << 16


def write_at(fd: int, data: bytes | bytearray, at: int) -> int:
    """Write all of ``data`` at ``at``; the offset after it."""
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.pwrite(fd, view[written:], at + written)
    return at + written


def copy_range(
    src: int, dst: int, offset: int, count: int, at: int, path: str | os.PathLike
) -> None:
    """Copy count bytes from src at offset to dst at at, in the kernel where the OS allows."""
    done, congruent = 0, (at - offset) % _ALIGN == 0
    copiers = [_by_chunk]  # looked up per call: tests take the kernel copies away
    if hasattr(os, "sendfile"):
        copiers.insert(0, _by_sendfile)
    if hasattr(os, "copy_file_range"):
        copiers.insert(0, _by_copy_file_range)
    for copier in copiers:
        try:
            while done < count:
                want = count - done
                if congruent and (at + done) % _ALIGN:  # stop at the boundary: see _ALIGN
                    want = min(want, _ALIGN - (at + done) % _ALIGN)
                copied = copier(src, dst, offset + done, want, at + done)
                if copied == 0:
                    break
                done += copied
        except OSError as e:  # e.g. EXDEV, ENOSYS, EINVAL: file system or OS cannot do it
            if copier is copiers[-1]:
                raise
            logger.debug("%s failed (%s); falling back", copier.__name__, e)
        if done == count:
            return
    raise ended_early(path, offset + done)


def _by_copy_file_range(src: int, dst: int, offset: int, count: int, at: int) -> int:
    return os.copy_file_range(src, dst, count, offset, at)


def _by_sendfile(src: int, dst: int, offset: int, count: int, at: int) -> int:
    os.lseek(dst, at, os.SEEK_SET)  # sendfile writes at dst's file position
    return os.sendfile(dst, src, offset, count)


def _by_chunk(src: int, dst: int, offset: int, count: int, at: int) -> int:
    return os.pwrite(dst, os.pread(src, min(count, CHUNK), offset), at)


def ended_early(path: str | os.PathLike, at: int) -> ModelFileError:
    return ModelFileError(
        f"model file {os.fspath(path)!r} ends at byte {at}, before the tensor data it held when "
        "it was read; it changed while onnxfix was working, run the command again"
    )

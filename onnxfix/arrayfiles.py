"""Arrays from the ``.npy`` and ``.npz`` files a user gives (kernels, biases, training data),
read so that no file can make onnxfix unpickle, allocate what the file does not hold, or fail
with numpy's or zipfile's exception.

numpy trusts a file's header: an ``.npy`` of 64 bytes whose header says 2^40 elements makes
``np.load`` allocate 4 TiB before it finds the data missing, and an ``.npz`` member does the
same. Here every header is read first (``numpy.lib.format``) and its shape times its item size
checked against the bytes that follow it (for an ``.npz`` member, against the member's size,
itself bounded by what its compressed bytes can expand to) before numpy reads a byte of data.
``allow_pickle`` stays False.

Problems raise :class:`ArrayFileProblem`, whose ``reason`` completes a sentence naming the file
(``"kernel file 'k.npy' " + reason``): each caller words it as its own error.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

__all__ = ["ArrayFileProblem", "ArrayFile", "open_arrays"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty archive
# zlib's deflate expands at most about 1032:1; a member claiming more is damaged or hostile.
_DEFLATE_RATIO = 1032
_MAX_HEADER = 10000  # numpy's own limit on a header's length (its max_header_size)


class ArrayFileProblem(Exception):
    """Why an array file cannot be read, worded to follow the file's name; ``pickled`` when it
    holds Python objects (which onnxfix never unpickles)."""

    def __init__(self, reason: str, *, pickled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pickled = pickled


@dataclass
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # where the data starts
    fortran: bool = False  # the data is in Fortran (column-major) order


def _read_header(f: IO[bytes], within: str) -> _Header:
    """The shape and dtype an .npy header gives, and where its data starts; ``within`` says
    which array of an .npz (``" in array 'x'"``), empty for an .npy."""
    try:
        version = npformat.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ArrayFileProblem(
                f"is in .npy format version {version[0]}.{version[1]}{within}, which onnxfix "
                "does not read; save it with numpy"
            )
        # The header's length first: numpy before 1.24 would read any length it gives.
        at, fmt = f.tell(), "<H" if version == (1, 0) else "<I"
        (length,) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
        if length > _MAX_HEADER:
            raise ValueError(f"the header says it is {length} bytes long")
        f.seek(at)
        read = (
            npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
    except ArrayFileProblem:
        raise
    except Exception as e:  # numpy parses the header with ast and tokenize: any of theirs
        if isinstance(e, MemoryError):
            raise
        raise ArrayFileProblem(
            f"has a damaged .npy header{within} ({_first_line(e)}); save it again with numpy"
        ) from None
    if dtype.hasobject:
        raise ArrayFileProblem(f"holds pickled Python objects{within}", pickled=True)
    if any(d < 0 for d in shape):
        raise ArrayFileProblem(
            f"has a damaged .npy header{within} (shape {shape}); save it again with numpy"
        )
    return _Header(tuple(shape), dtype, f.tell(), bool(fortran))


def _check_size(header: _Header, available: int, within: str) -> None:
    need = math.prod(header.shape) * header.dtype.itemsize
    if need > available:
        raise ArrayFileProblem(
            f"is truncated or has a damaged header{within}: the header says shape "
            f"{header.shape} of {header.dtype} ({need} bytes), but only {available} bytes "
            "follow it; save it again with numpy"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class ArrayFile:
    """An opened ``.npy`` (one array, ``keys`` None) or ``.npz`` (``keys``: its arrays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        try:
            with open(path, "rb") as f:
                start = f.read(len(_NPY_MAGIC))
        except OSError as e:
            raise ArrayFileProblem(f"cannot be read ({e.strerror or e})") from None  # a folder...
        if not start:
            raise ArrayFileProblem("is empty; save the arrays with numpy.save or numpy.savez")
        if start.startswith(_NPY_MAGIC):
            self.keys: list[str] | None = None
            return
        if not start.startswith(_ZIP_MAGIC):
            raise ArrayFileProblem(
                "is neither an .npy nor an .npz file; save the arrays with numpy.save or "
                "numpy.savez"
            )
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ArrayFileProblem(
                f"is a damaged or truncated .npz archive ({_first_line(e)}); save it again "
                "with numpy.savez"
            ) from None
        for info in self._zip.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            self._members.setdefault(key, info)
        self.keys = list(self._members)

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def read(self, key: str | None = None) -> np.ndarray:
        """The array (of an .npy), or the array ``key`` (of an .npz), its header checked first."""
        if self._zip is None:
            return self._read_npy()
        assert key is not None and key in self._members
        return self._read_member(key, self._members[key])

    def map(self, key: str) -> np.ndarray:
        """The array ``key`` of an .npz as a read-only ``numpy.memmap`` of the file, none of
        its data read, when the member is stored uncompressed (``numpy.savez``); its header
        is checked as :meth:`read` checks it, and its data must lie within the member and the
        file.

        A compressed member (``numpy.savez_compressed``) cannot be mapped: it is read into
        memory (:meth:`read`), so it must fit there.
        """
        assert self._zip is not None and key in self._members
        info = self._members[key]
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # or encrypted
            return self._read_member(key, info)
        within = f" in array {key!r}"

        def damaged(why: str) -> ArrayFileProblem:
            return ArrayFileProblem(
                f"is a damaged or truncated .npz archive ({why}{within}); save it again with "
                "numpy.savez"
            )

        if info.file_size != info.compress_size:
            raise ArrayFileProblem(
                f"is a damaged .npz archive: array {key!r} claims {info.file_size} bytes from "
                f"{info.compress_size} stored; save it again with numpy.savez"
            )
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(info.header_offset)
                local = f.read(30)  # the member's local file header
                if len(local) != 30 or not local.startswith(b"PK\x03\x04"):
                    raise damaged("no local file header where the directory says")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_length + extra_length
                end = start + info.file_size
                if end > size:
                    raise damaged(f"the member ends at byte {end} of {size}")
                f.seek(start)
                header = _read_header(f, within)  # header.offset: from the file's start
                _check_size(header, end - header.offset, within)
        except OSError as e:
            raise ArrayFileProblem(f"cannot be read ({e.strerror or e})") from None
        if math.prod(header.shape) == 0:  # nothing to map (mmap refuses a length of 0)
            return np.empty(header.shape, header.dtype, order="F" if header.fortran else "C")
        try:
            return np.memmap(
                self.path,
                dtype=header.dtype,
                mode="r",
                offset=header.offset,
                shape=header.shape,
                order="F" if header.fortran else "C",
            )
        except (OSError, ValueError) as e:
            raise ArrayFileProblem(f"cannot be read ({_first_line(e)}{within})") from None

    def _read_npy(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            header = _read_header(f, "")
            _check_size(header, os.fstat(f.fileno()).st_size - header.offset, "")
            f.seek(0)
            try:
                return npformat.read_array(f, allow_pickle=False)
            except (ValueError, EOFError, OSError) as e:
                raise ArrayFileProblem(
                    f"cannot be read ({_first_line(e)}); save it again with numpy"
                ) from None

    def _read_member(self, key: str, info: zipfile.ZipInfo) -> np.ndarray:
        assert self._zip is not None
        within = f" in array {key!r}"
        if info.compress_type == zipfile.ZIP_STORED:
            fits = info.file_size == info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            fits = info.file_size <= info.compress_size * _DEFLATE_RATIO + 1024
        else:
            raise ArrayFileProblem(
                f"holds array {key!r} compressed with zip method {info.compress_type}; save it "
                "with numpy.savez or numpy.savez_compressed"
            )
        if not fits:
            raise ArrayFileProblem(
                f"is a damaged .npz archive: array {key!r} claims {info.file_size} bytes from "
                f"{info.compress_size} stored; save it again with numpy.savez"
            )
        try:
            with self._zip.open(info) as f:
                header = _read_header(f, within)
                _check_size(header, info.file_size - header.offset, within)
            with self._zip.open(info) as f:
                return npformat.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, NotImplementedError) as e:
            raise ArrayFileProblem(
                f"is a damaged or truncated .npz archive ({_first_line(e)}{within}); save it "
                "again with numpy.savez"
            ) from None


def open_arrays(path: str | os.PathLike) -> ArrayFile:
    """``path`` opened as an array file; raises :class:`ArrayFileProblem` if it is not one."""
    return ArrayFile(Path(path))

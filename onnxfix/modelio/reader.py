"""Read ``.onnx`` files without loading the weights embedded in them.

``onnx.load`` -> change one kernel -> ``onnx.save`` costs several copies of the file in time and
about three times its size in memory, because protobuf materialises every weight. This module
reads just enough of the protobuf wire format to find where each top-level initializer's
``raw_data`` payload lies in the file and hands protobuf everything else; on save,
:mod:`onnxfix.modelio.writer` copies those byte ranges from the source file to the destination in the
kernel (:mod:`onnxfix.modelio.filecopy`), so the cost is about that of a ``cp``.

The file is read with ``os.pread`` through a small window, not mmap: Linux keeps cached files in
large folios (ext4, 6.x kernels) and maps a whole folio, up to 2 MiB, on the first touch of a
mapped page. Reading the 53 tensor headers of a 500 MB model through mmap added 110 MiB of RSS.

Wire-format layout relied on (``onnx.proto``): ModelProto.graph is field 7, GraphProto.initializer
field 5, TensorProto.name field 8 and TensorProto.raw_data field 9. Fields may come in any order
and repeat as protobuf allows: repeated ``graph`` fields are merged, a ``raw_data`` that occurs
several times keeps its last value, unknown fields are kept. Groups (wire types 3 and 4), which
ONNX never uses, are rejected as corruption at the three levels this module reads.

Only top-level initializers are made light; tensors in subgraphs, node attributes, training
info and functions stay in the parsed model as protobuf reads them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from google.protobuf.message import DecodeError

from onnxfix.errors import ModelFileError
from onnxfix.modelio import external
from onnxfix.modelio.filecopy import ended_early
from onnxfix.modelio.protowire import (
    DATA_LOCATION,
    EXTERNAL,
    EXTERNAL_DATA,
    GRAPH,
    INITIALIZER,
    LEN,
    NAME,
    RAW_DATA,
    len_field,
)

if TYPE_CHECKING:
    import onnx

__all__ = ["Splice", "read_light_model", "first_external_location", "read_payload", "open_source"]

logger = logging.getLogger(__name__)

_EMPTY_RAW_DATA = b"\x4a\x00"  # field 9, length 0
_WINDOW = 1 << 16  # read-ahead when scanning field headers


@dataclass(frozen=True)
class Splice:
    """Where one tensor's ``raw_data`` payload lies in the source file, or in ``source``.

    A splice with a ``source`` takes a tensor's new bytes from another file (export takes them
    from the checkpoint), so they are copied kernel-side like the unchanged ones.
    """

    offset: int  # absolute offset of the first payload byte
    length: int  # payload length in bytes
    source: str | None = None  # another file holding the payload; None: the model's own


# ----------------------------------------------------------------------------------- reading


class _Corrupt(Exception):
    """``args`` = (what is wrong, file offset); read_light_model makes it a ModelFileError."""


class _Source:
    """Random access to an open file by ``os.pread``, with one small read-ahead window."""

    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, os.fstat(fd).st_size
        self.window, self.window_at = b"", 0

    def __getitem__(self, pos: int) -> int:
        if not 0 <= pos - self.window_at < len(self.window):
            self.window, self.window_at = self.read(pos, min(pos + _WINDOW, self.size)), pos
        return self.window[pos - self.window_at]

    def read(self, start: int, stop: int) -> bytes:
        at = start - self.window_at
        if 0 <= at and stop - self.window_at <= len(self.window):  # no system call
            return self.window[at : stop - self.window_at]
        data = os.pread(self.fd, stop - start, start)
        while len(data) < stop - start:  # short reads: big ranges, or the file shrank
            more = os.pread(self.fd, stop - start - len(data), start + len(data))
            if not more:
                raise _Corrupt("the file shrank while it was read", start + len(data))
            data += more
        return data


def _varint(buf: _Source, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` (at most 10 bytes, as protobuf allows) and the position after it."""
    window, at = buf.window, pos - buf.window_at
    if 0 <= at < len(window) and pos < end:  # already read: most tags and lengths
        byte = window[at]
        if byte < 0x80:
            return byte, pos + 1
        value, shift, i = byte & 0x7F, 7, at + 1
        for i in range(at + 1, min(len(window), at + 10, end - buf.window_at)):
            byte = window[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value & 0xFFFFFFFFFFFFFFFF, buf.window_at + i + 1
            shift += 7
    start, value, shift = pos, 0, 0  # across the window's end, or malformed
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    if shift >= 70:
        raise _Corrupt("a number longer than 10 bytes", start)
    raise _Corrupt(_past_end(buf, end), start)


def _past_end(buf: _Source, end: int) -> str:
    if end >= buf.size:
        return "the file ends inside a field"
    return "a field runs past the end of the message holding it"


def _fields(buf: _Source, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, field start, value start, field end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or tag > 0xFFFFFFFF:
            raise _Corrupt(f"an invalid field number ({number})", field_start)
        if wire_type == 0:
            _, field_end = _varint(buf, pos, end)
        elif wire_type == 1:
            field_end = pos + 8
        elif wire_type == 5:
            field_end = pos + 4
        elif wire_type == LEN:
            length, pos = _varint(buf, pos, end)
            field_end = pos + length
        elif wire_type in (3, 4):
            raise _Corrupt(
                f"a group field (wire type {wire_type}, never used by ONNX)", field_start
            )
        else:
            raise _Corrupt(f"an invalid wire type ({wire_type})", field_start)
        if field_end > end:
            raise _Corrupt(_past_end(buf, end), field_start)
        yield number, wire_type, field_start, pos, field_end
        pos = field_end


class _Lightener:
    """Copies a serialized ModelProto without the large initializer payloads.

    ``found`` gets one entry per top-level initializer, in the order protobuf will list them
    after merging every graph field: the payload's Splice, or None when it stays inline.
    Unchanged stretches are copied in one slice; only the length prefixes of the messages that
    lost bytes (tensor, graph) are re-encoded.
    """

    def __init__(self, buf: _Source, min_payload: int) -> None:
        self.buf, self.min_payload = buf, min_payload
        self.found: list[Splice | None] = []
        self.seen_names: set[bytes] = set()
        self.graphs = 0

    def model(self) -> bytes | bytearray:
        light = self._rewrite(0, self.buf.size, GRAPH, self._graph)
        return light if light is not None else self.buf.read(0, self.buf.size)

    def _graph(self, start: int, end: int) -> bytearray | None:
        self.graphs += 1
        return self._rewrite(start, end, INITIALIZER, self._tensor)

    def _rewrite(
        self,
        start: int,
        end: int,
        number: int,
        rewrite: Callable[[int, int], bytes | bytearray | None],
    ) -> bytearray | None:
        """buf[start:end] with each LEN field ``number`` replaced by ``rewrite`` of its body;
        None when ``rewrite`` replaced none (the caller keeps the bytes as they are)."""
        buf, out, kept_from = self.buf, bytearray(), start
        for field, wire_type, field_start, value, field_end in _fields(buf, start, end):
            if field != number or wire_type != LEN:
                continue
            body = rewrite(value, field_end)
            if body is not None:
                out += buf.read(kept_from, field_start)
                out += len_field(number, len(body))
                out += body
                kept_from = field_end
        if kept_from == start:
            return None
        out += buf.read(kept_from, end)
        return out

    def _tensor(self, start: int, end: int) -> bytes | None:
        buf, raw, name = self.buf, [], b""
        for field, wire_type, field_start, value, field_end in _fields(buf, start, end):
            if wire_type == LEN and field == RAW_DATA:
                raw.append((field_start, value, field_end))
            elif wire_type == LEN and field == NAME:
                name = buf.read(value, field_end)  # protobuf keeps the last one, so do we
        # Initializer names should be unique; if not, only the first of a name is made light so
        # that the name alone says which tensor a splice belongs to.
        first_of_name = name not in self.seen_names
        self.seen_names.add(name)
        if not raw:
            self.found.append(None)
            return None
        last_start, payload, last_end = raw[-1]
        light = first_of_name and last_end - payload >= self.min_payload
        self.found.append(Splice(payload, last_end - payload) if light else None)
        if len(raw) == 1 and not light:
            return None
        # Earlier raw_data occurrences are dead (the last wins): drop them.
        out, kept_from = bytearray(), start
        for field_start, _, field_end in raw[:-1]:
            out += buf.read(kept_from, field_start)
            kept_from = field_end
        out += buf.read(kept_from, last_start)
        out += _EMPTY_RAW_DATA if light else buf.read(last_start, last_end)
        out += buf.read(last_end, end)
        return bytes(out)


def read_light_model(
    path: str | os.PathLike, *, min_payload: int = 1024
) -> tuple[onnx.ModelProto, dict[str, Splice]]:
    """Parse ``path`` without reading the large weights embedded in it.

    Every top-level ``graph.initializer`` whose ``raw_data`` payload is at least
    ``min_payload`` bytes comes back with ``raw_data == b""`` (still present; every other field,
    unknown ones included, intact), and the returned mapping says where, by tensor name, its
    payload lies in the file. Payloads are not read, apart from the 64 KiB read-ahead used
    to scan field headers. If two initializers share a name, only the first can be light.
    """
    # onnx is imported here, not at the top: staging scans files with this module while onnx is
    # still being imported (see onnxfix.modelio.staging).
    import onnx

    if min_payload < 0:
        raise ValueError(f"min_payload must be >= 0, not {min_payload}")
    shown = repr(os.fspath(path))
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ModelFileError(f"model file {shown} is empty; it is not an ONNX model")
            lightener = _Lightener(_Source(f.fileno()), min_payload)
            light = lightener.model()
    except _Corrupt as e:
        what, at = e.args
        raise ModelFileError(
            f"{shown} is not a readable ONNX model: {what} at byte {at}; "
            "the file is truncated or corrupt, export or download it again"
        ) from None
    except OSError as e:
        raise ModelFileError(f"model file {shown} cannot be read: {e.strerror or e}") from e
    try:
        # bytes(): protobuf's stubs take bytes; the light model is small, so the copy is too.
        model = onnx.ModelProto.FromString(bytes(light))
    except DecodeError as e:
        raise ModelFileError(
            f"{shown} is not a readable ONNX model: protobuf cannot parse it ({e}); "
            "the file is truncated or corrupt, export or download it again"
        ) from e
    del light
    if not lightener.graphs:
        raise ModelFileError(f"{shown} holds no graph; it is not an ONNX model")
    initializers = model.graph.initializer
    if len(initializers) != len(lightener.found):  # the scan and protobuf disagree: a bug
        raise AssertionError(
            f"{len(lightener.found)} initializers found, {len(initializers)} parsed"
        )
    splices: dict[str, Splice] = {}
    for i, (tensor, splice) in enumerate(zip(initializers, lightener.found)):
        name = tensor.name
        if not isinstance(name, str):  # protobuf gives bytes for a name that is not UTF-8
            raise ModelFileError(
                f"{shown} is not a readable ONNX model: the name of initializer {i} is not "
                "UTF-8 text; the file is truncated or corrupt, export or download it again"
            )
        if splice is not None:
            splices[name] = splice
    return model, splices


def first_external_location(path: str | os.PathLike, *, min_payload: int = 1024) -> str | None:
    """The data file named by ``path``'s first top-level initializer kept in external data.

    None when no initializer is, or when an embedded payload of at least ``min_payload`` bytes
    comes first (a model with embedded weights). A guess for copying ahead, read from the file
    alone without onnx: tensors elsewhere are not looked at, and an unreadable or corrupt file
    gives None, leaving the error to :func:`read_light_model`. So does a location the model
    may not name (:mod:`onnxfix.modelio.external`: outside its folder, not a regular file, the
    model itself): the copy ahead never opens what the read will refuse.
    """
    try:
        with open(path, "rb") as f:
            buf = _Source(f.fileno())
            for number, wire_type, _, value, end in _fields(buf, 0, buf.size):
                if number != GRAPH or wire_type != LEN:
                    continue
                for field, kind, _, start, stop in _fields(buf, value, end):
                    if field == INITIALIZER and kind == LEN:
                        found = _tensor_location(buf, start, stop, min_payload)
                        if found is not None:
                            return _allowed(Path(path), found) if found else None
    except (_Corrupt, OSError, UnicodeDecodeError):
        pass
    return None


def _allowed(model: Path, location: str) -> str | None:
    """``location`` if the model may name it, else None (the read says why)."""
    try:
        external.check_location(model, location)
    except ModelFileError:
        return None
    return location


def _tensor_location(buf: _Source, start: int, end: int, min_payload: int) -> str | None:
    """The tensor's external data location, "" if its payload is embedded, None if undecided."""
    location, external, embedded = None, False, False
    for field, wire_type, _, value, field_end in _fields(buf, start, end):
        if field == DATA_LOCATION and wire_type == 0:
            external = _varint(buf, value, field_end)[0] == EXTERNAL
        elif field == RAW_DATA and wire_type == LEN:
            embedded = field_end - value >= min_payload
        elif field == EXTERNAL_DATA and wire_type == LEN:
            entry = {
                key: buf.read(at, stop)
                for key, kind, _, at, stop in _fields(buf, value, field_end)
                if kind == LEN
            }
            if entry.get(1) == b"location" and 2 in entry:  # StringStringEntryProto key, value
                if location is not None:  # named twice: the read refuses it
                    return ""
                location = entry[2].decode()
    if external and location is not None:
        return location
    return "" if embedded else None


def read_payload(path: str | os.PathLike, splice: Splice) -> bytes:
    """The ``splice.length`` bytes at ``splice.offset`` in ``path`` (or the splice's own
    source): one tensor's payload."""
    path = splice.source if splice.source is not None else path
    with open_source(path) as f:
        try:
            return _Source(f.fileno()).read(splice.offset, splice.offset + splice.length)
        except _Corrupt as e:
            raise ended_early(path, e.args[1]) from None


def open_source(path: str | os.PathLike) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise ModelFileError(
            f"model file {os.fspath(path)!r} cannot be read: {e.strerror or e}"
        ) from e

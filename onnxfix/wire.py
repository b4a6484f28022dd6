"""Read and write ``.onnx`` files without loading the weights embedded in them.

``onnx.load`` -> change one kernel -> ``onnx.save`` costs several copies of the file in time and
about three times its size in memory, because protobuf materialises every weight. This module
reads just enough of the protobuf wire format to find where each top-level initializer's
``raw_data`` payload lies in the file, hands protobuf everything else, and on save copies those
byte ranges from the source file to the destination in the kernel (``os.copy_file_range``, then
``os.sendfile``, then a chunked copy), so the cost is about that of a ``cp``.

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

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Union

from google.protobuf.message import DecodeError, Message

from .errors import ModelFileError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "Splice",
    "read_light_model",
    "first_external_location",
    "Plan",
    "plan_model",
    "write_model",
    "write_plan",
    "read_payload",
    "copy_range",
]

logger = logging.getLogger(__name__)

_GRAPH, _INITIALIZER, _NAME, _RAW_DATA = 7, 5, 8, 9
_EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 13, 14, 1  # TensorProto fields, DataLocation.EXTERNAL
_LEN = 2  # wire type of length-delimited fields
_EMPTY_RAW_DATA = b"\x4a\x00"  # field 9, length 0
_PROTOBUF_LIMIT = (1 << 31) - 1  # protobuf readers refuse a message this big or bigger
_CHUNK = 1 << 20  # write buffer and fallback copy chunk: memory stays small whatever the model
_WINDOW = 1 << 16  # read-ahead when scanning field headers
# A kernel copy runs as fast as cp only from a 64 KiB boundary in both files (Linux 6.x, ext4,
# warm cache: the file is spliced 16 pages at a time and misaligned rounds get small folios):
# 1 GB took 0.6 s from offset 5828 against 0.42 s from 0. So a payload at the same offset
# modulo this in both files is copied in two calls, the first up to the boundary.
_ALIGN = 1 << 16


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
        elif wire_type == _LEN:
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


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, body_length: int) -> bytes:
    """Tag and length prefix of a length-delimited field."""
    return _varint_bytes(number << 3 | _LEN) + _varint_bytes(body_length)


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

    def model(self) -> bytearray:
        return self._rewrite(0, self.buf.size, _GRAPH, self._graph)

    def _graph(self, start: int, end: int) -> bytes | None:
        self.graphs += 1
        return self._rewrite(start, end, _INITIALIZER, self._tensor, changed_only=True)

    def _rewrite(
        self,
        start: int,
        end: int,
        number: int,
        rewrite: Callable[[int, int], bytes | None],
        *,
        changed_only: bool = False,
    ) -> bytearray | None:
        """buf[start:end] with each LEN field ``number`` replaced by ``rewrite`` of its body."""
        buf, out, kept_from = self.buf, bytearray(), start
        for field, wire_type, field_start, value, field_end in _fields(buf, start, end):
            if field != number or wire_type != _LEN:
                continue
            body = rewrite(value, field_end)
            if body is not None:
                out += buf.read(kept_from, field_start)
                out += _len_field(number, len(body))
                out += body
                kept_from = field_end
        if changed_only and kept_from == start:
            return None
        out += buf.read(kept_from, end)
        return out

    def _tensor(self, start: int, end: int) -> bytes | None:
        buf, raw, name = self.buf, [], b""
        for field, wire_type, field_start, value, field_end in _fields(buf, start, end):
            if wire_type == _LEN and field == _RAW_DATA:
                raw.append((field_start, value, field_end))
            elif wire_type == _LEN and field == _NAME:
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
    # still being imported (see onnxfix.staging).
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
        model = onnx.ModelProto.FromString(light)
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
    gives None, leaving the error to :func:`read_light_model`.
    """
    try:
        with open(path, "rb") as f:
            buf = _Source(f.fileno())
            for number, wire_type, _, value, end in _fields(buf, 0, buf.size):
                if number != _GRAPH or wire_type != _LEN:
                    continue
                for field, kind, _, start, stop in _fields(buf, value, end):
                    if field == _INITIALIZER and kind == _LEN:
                        found = _tensor_location(buf, start, stop, min_payload)
                        if found is not None:
                            return found or None
    except (_Corrupt, OSError, UnicodeDecodeError):
        pass
    return None


def _tensor_location(buf: _Source, start: int, end: int, min_payload: int) -> str | None:
    """The tensor's external data location, "" if its payload is embedded, None if undecided."""
    location, external, embedded = None, False, False
    for field, wire_type, _, value, field_end in _fields(buf, start, end):
        if field == _DATA_LOCATION and wire_type == 0:
            external = _varint(buf, value, field_end)[0] == _EXTERNAL
        elif field == _RAW_DATA and wire_type == _LEN:
            embedded = field_end - value >= min_payload
        elif field == _EXTERNAL_DATA and wire_type == _LEN:
            entry = {
                key: buf.read(at, stop)
                for key, kind, _, at, stop in _fields(buf, value, field_end)
                if kind == _LEN
            }
            if entry.get(1) == b"location" and 2 in entry:  # StringStringEntryProto key, value
                location = entry[2].decode()
    if external and location is not None:
        return location
    return "" if embedded else None


def read_payload(path: str | os.PathLike, splice: Splice) -> bytes:
    """The ``splice.length`` bytes at ``splice.offset`` in ``path`` (or the splice's own
    source): one tensor's payload."""
    path = splice.source if splice.source is not None else path
    with _open_source(path) as f:
        try:
            return _Source(f.fileno()).read(splice.offset, splice.offset + splice.length)
        except _Corrupt as e:
            raise _ended_early(path, e.args[1]) from None


# ----------------------------------------------------------------------------------- writing

_Part = Union[bytes, Splice]


@dataclass(frozen=True)
class Plan:
    """A model's output file, before it is written: see :func:`plan_model`."""

    parts: list[_Part]  # serialized pieces and source payload ranges, in file order
    # Where each top-level initializer's raw_data payload lands in the output: (index in
    # graph.initializer, absolute offset, length); initializers without raw_data are left out.
    payloads: list[tuple[int, int, int]]

    @property
    def size(self) -> int:
        return sum(map(_size, self.parts))

    def light_view(
        self, model: onnx.ModelProto, *, min_payload: int = 1024
    ) -> tuple[onnx.ModelProto, dict[str, Splice]]:
        """What :func:`read_light_model` will return for the written file, computed without it.

        ``model`` is the one planned. The payloads read_light_model makes light (the first
        initializer of each name, ``min_payload`` bytes or more) get ``raw_data == b""`` in a
        copy of ``model``; the splices say where they lie in the output. A caller that checks
        this view before writing can prove it checked the written file by comparing it with
        what read_light_model gives afterwards.
        """
        light = type(model)()
        light.CopyFrom(model)
        initializers = light.graph.initializer
        at, splices, seen = {i: (offset, length) for i, offset, length in self.payloads}, {}, set()
        for i, tensor in enumerate(initializers):
            first_of_name = tensor.name not in seen
            seen.add(tensor.name)
            where = at.get(i)
            if first_of_name and where is not None and where[1] >= min_payload:
                tensor.raw_data = b""  # still present, as the lightener leaves it
                splices[tensor.name] = Splice(*where)
        return light, splices


def plan_model(model: onnx.ModelProto, splices: Mapping[str, Splice]) -> Plan:
    """The output file as serialized pieces and source payload ranges, in order.

    Fields go in field-number order with unknown fields last, as protobuf serializes them, so a
    payload keeps its source offset unless something before it changed size (see _ALIGN), and
    an unchanged model that onnx.save wrote is written back byte for byte. Each initializer is
    serialized once.
    """
    if not model.HasField("graph"):
        return Plan([model.SerializeToString()], [])
    graph_before, graph_after = _split(model.graph, _INITIALIZER)
    graph: list[_Part] = [graph_before]
    # (initializer index, graph part index, payload offset in that part or -1 for a splice, length)
    payloads: list[tuple[int, int, int, int]] = []
    spliced: set[str] = set()
    for i, tensor in enumerate(model.graph.initializer):
        splice = splices.get(tensor.name) if tensor.name not in spliced else None
        if splice is None:
            data = tensor.SerializeToString()
            head = _len_field(_INITIALIZER, len(data))
            raw = _raw_data_field(data)
            if raw is not None and raw[1] is not None:
                payloads.append((i, len(graph), len(head) + raw[1], raw[2] - raw[1]))
            graph.append(head + data)
            continue
        spliced.add(tensor.name)
        if tensor.raw_data:
            raise ValueError(
                f"initializer {tensor.name!r} has raw_data and a splice; delete its splice "
                "when giving it new data"
            )
        data = tensor.SerializeToString()
        raw = _raw_data_field(data)
        if raw is None:  # an order this scan does not expect: let protobuf split it
            before, after = _split(tensor, _RAW_DATA)
        else:
            before, after = data[: raw[0]], data[raw[2] :]
        before += _len_field(_RAW_DATA, splice.length)
        size = len(before) + splice.length + len(after)
        payloads.append((i, len(graph) + 1, -1, splice.length))
        graph += [_len_field(_INITIALIZER, size) + before, splice, after]
    graph.append(graph_after)
    before, after = _split(model, _GRAPH)
    parts = [before, _len_field(_GRAPH, sum(map(_size, graph))), *graph, after]
    starts, at = [], 0
    for part in parts:
        starts.append(at)
        at += _size(part)
    return Plan(
        parts,
        [(i, starts[part + 2] + max(inside, 0), length) for i, part, inside, length in payloads],
    )


def _raw_data_field(data: bytes) -> tuple[int, int | None, int] | None:
    """Where raw_data is in a serialized TensorProto: (field start, value start, field end).

    Protobuf writes known fields in number order, so the scan stops at the first field numbered
    9 or more; when that is not raw_data, the tensor has none and (position, None, position)
    says where it would go. None when the bytes are not laid out as expected.
    """
    pos, end = 0, len(data)
    try:
        while pos < end:
            tag, value = _varint_in(data, pos)
            number, wire_type = tag >> 3, tag & 7
            if number >= _RAW_DATA:
                if number != _RAW_DATA:
                    return pos, None, pos
                if wire_type != _LEN:
                    return None
                length, value = _varint_in(data, value)
                return pos, value, value + length
            if wire_type == 0:
                _, pos = _varint_in(data, value)
            elif wire_type == _LEN:
                length, value = _varint_in(data, value)
                pos = value + length
            elif wire_type in (1, 5):
                pos = value + (8 if wire_type == 1 else 4)
            else:
                return None
    except IndexError:
        return None
    return (pos, None, pos) if pos == end else None


def _varint_in(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos]`` and the position after it (IndexError past the end)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7


def _split(message: Message, number: int) -> tuple[bytes, bytes]:
    """``message`` serialized without field ``number``: the fields numbered below it, then those
    above it and the unknown fields. Copies, not field reads: a string that is not UTF-8 passes."""
    whole, after = type(message)(), type(message)()
    whole.CopyFrom(message)
    fields = message.DESCRIPTOR.fields
    whole.ClearField(next(field.name for field in fields if field.number == number))
    after.CopyFrom(whole)  # cheap now that the big field is gone
    for field in fields:
        if field.number < number:
            after.ClearField(field.name)
    data, tail = whole.SerializeToString(), after.SerializeToString()
    if not data.endswith(tail):  # protobuf writes fields in number order, unknown ones last
        raise AssertionError(f"unexpected field order in {type(message).__name__}")
    return data[: len(data) - len(tail)], tail


def _size(part: _Part) -> int:
    return part.length if isinstance(part, Splice) else len(part)


def write_model(
    model: onnx.ModelProto,
    splices: Mapping[str, Splice],
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    *,
    copied: bool = False,
) -> None:
    """Write ``model`` to ``dst_path``, taking spliced payloads from ``src_path``.

    Each top-level initializer named in ``splices`` is written with ``raw_data`` = the bytes of
    ``src_path`` at its splice; a caller that gives a tensor new data deletes its entry. (With
    duplicate names only the first initializer of a name is spliced, matching
    :func:`read_light_model`.) Everything else is serialized by protobuf. ``onnx.load`` of the
    result equals ``model`` with its payloads put back. Fields are written in field-number
    order, as ``onnx.save`` writes them, whatever their order in the source: protobuf parsers
    accept any order, and a source in this order keeps its payload offsets, which makes the
    copies fastest.

    With ``copied``, ``dst_path`` already holds a whole copy of ``src_path`` (made ahead, see
    :mod:`onnxfix.staging`): a payload that lands at its source offset is left where it is,
    everything else is written over the copy and the file is cut to its length.

    Memory stays proportional to the bytes that are not spliced. ``dst_path`` is written in
    place and removed if writing fails; writing under a temporary name and renaming is the
    caller's job.
    """
    write_plan(plan_model(model, splices), src_path, dst_path, copied=copied)


def write_plan(
    plan: Plan, src_path: str | os.PathLike, dst_path: str | os.PathLike, *, copied: bool = False
) -> None:
    """Write what :func:`plan_model` planned: :func:`write_model` in two steps, so that a
    caller can check the plan's :meth:`Plan.light_view` while the copy made ahead finishes."""
    parts, total = plan.parts, plan.size
    dst_shown = repr(os.fspath(dst_path))
    if total > _PROTOBUF_LIMIT:
        raise ModelFileError(
            f"{dst_shown} would be {total} bytes, over protobuf's 2 GiB limit; "
            "save the model with its weights in external data"
        )
    with _open_source(src_path) as src:
        source = os.fstat(src.fileno())
        if os.path.exists(dst_path) and os.path.samestat(source, os.stat(dst_path)):
            raise ValueError(f"cannot write {dst_shown} over its own source; write elsewhere")
        size = source.st_size
        for part in parts:
            if isinstance(part, Splice):
                where = src_path if part.source is None else part.source
                end = size if part.source is None else os.stat(part.source).st_size
                if part.offset + part.length > end:
                    raise _ended_early(where, end)
        flags = os.O_WRONLY | os.O_CREAT | (0 if copied else os.O_TRUNC)
        try:
            dst_fd = os.open(dst_path, flags, 0o666)
        except OSError as e:
            raise ModelFileError(f"cannot write {dst_shown}: {e.strerror or e}") from e
        try:
            _write_parts(parts, src.fileno(), dst_fd, src_path, copied)
            if copied:
                os.ftruncate(dst_fd, total)
        except BaseException as e:
            os.close(dst_fd)
            with contextlib.suppress(OSError):
                os.unlink(dst_path)
            if isinstance(e, OSError):
                raise ModelFileError(f"cannot write {dst_shown}: {e.strerror or e}") from e
            raise
        os.close(dst_fd)


def _write_parts(
    parts: list[_Part], src: int, dst: int, src_path: str | os.PathLike, copied: bool
) -> None:
    """Small serialized parts go out through one buffer, payloads from file to file."""
    pending, at = bytearray(), 0
    for part in [*parts, b""]:
        if isinstance(part, bytes) and part and len(pending) + len(part) < _CHUNK:
            pending += part
            continue
        at = _write_at(dst, pending, at)
        del pending[:]
        if isinstance(part, Splice) and part.source is not None:
            with _open_source(part.source) as other:
                copy_range(other.fileno(), dst, part.offset, part.length, at, part.source)
            at += part.length
        elif isinstance(part, Splice):
            if not (copied and part.offset == at):  # else the copy made ahead holds it there
                copy_range(src, dst, part.offset, part.length, at, src_path)
            at += part.length
        else:  # a large part (a tensor given new data), or the final empty one
            at = _write_at(dst, part, at)


def _write_at(fd: int, data: bytes | bytearray, at: int) -> int:
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
    raise _ended_early(path, offset + done)


def _by_copy_file_range(src: int, dst: int, offset: int, count: int, at: int) -> int:
    return os.copy_file_range(src, dst, count, offset, at)


def _by_sendfile(src: int, dst: int, offset: int, count: int, at: int) -> int:
    os.lseek(dst, at, os.SEEK_SET)  # sendfile writes at dst's file position
    return os.sendfile(dst, src, offset, count)


def _by_chunk(src: int, dst: int, offset: int, count: int, at: int) -> int:
    return os.pwrite(dst, os.pread(src, min(count, _CHUNK), offset), at)


def _open_source(path: str | os.PathLike) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise ModelFileError(
            f"model file {os.fspath(path)!r} cannot be read: {e.strerror or e}"
        ) from e


def _ended_early(path: str | os.PathLike, at: int) -> ModelFileError:
    return ModelFileError(
        f"model file {os.fspath(path)!r} ends at byte {at}, before the tensor data it held when "
        "it was read; it changed while onnxfix was working, run the command again"
    )

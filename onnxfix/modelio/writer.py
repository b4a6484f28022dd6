"""Write an ``.onnx`` file from a light model: serialized structure, payloads copied.

The writing half of :mod:`onnxfix.modelio.reader`: :func:`plan_model` lays the output out as serialized
pieces and payload ranges (of the source model, or of another file such as a checkpoint),
:func:`write_plan` writes them, the payloads kernel-side (:mod:`onnxfix.modelio.filecopy`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from google.protobuf.message import Message

from onnxfix.errors import ModelFileError
from onnxfix.modelio import filecopy
from onnxfix.modelio.filecopy import copy_range, ended_early, write_at
from onnxfix.modelio.protowire import GRAPH, INITIALIZER, LEN, RAW_DATA, len_field
from onnxfix.modelio.reader import Splice, open_source

if TYPE_CHECKING:
    import onnx

__all__ = ["Plan", "plan_model", "write_model", "write_plan"]

_PROTOBUF_LIMIT = (1 << 31) - 1  # protobuf readers refuse a message this big or bigger

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
    graph_before, graph_after = _split(model.graph, INITIALIZER)
    graph: list[_Part] = [graph_before]
    # (initializer index, graph part index, payload offset in that part or -1 for a splice, length)
    payloads: list[tuple[int, int, int, int]] = []
    spliced: set[str] = set()
    for i, tensor in enumerate(model.graph.initializer):
        splice = splices.get(tensor.name) if tensor.name not in spliced else None
        if splice is None:
            data = tensor.SerializeToString()
            head = len_field(INITIALIZER, len(data))
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
            before, after = _split(tensor, RAW_DATA)
        else:
            before, after = data[: raw[0]], data[raw[2] :]
        before += len_field(RAW_DATA, splice.length)
        size = len(before) + splice.length + len(after)
        payloads.append((i, len(graph) + 1, -1, splice.length))
        graph += [len_field(INITIALIZER, size) + before, splice, after]
    graph.append(graph_after)
    before, after = _split(model, GRAPH)
    parts = [before, len_field(GRAPH, sum(map(_size, graph))), *graph, after]
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
            if number >= RAW_DATA:
                if number != RAW_DATA:
                    return pos, None, pos
                if wire_type != LEN:
                    return None
                length, value = _varint_in(data, value)
                return pos, value, value + length
            if wire_type == 0:
                _, pos = _varint_in(data, value)
            elif wire_type == LEN:
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
    :mod:`onnxfix.modelio.staging`): a payload that lands at its source offset is left where it is,
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
    with open_source(src_path) as src:
        source = os.fstat(src.fileno())
        if os.path.exists(dst_path) and os.path.samestat(source, os.stat(dst_path)):
            raise ValueError(f"cannot write {dst_shown} over its own source; write elsewhere")
        size = source.st_size
        for part in parts:
            if isinstance(part, Splice):
                where = src_path if part.source is None else part.source
                end = size if part.source is None else os.stat(part.source).st_size
                if part.offset + part.length > end:
                    raise ended_early(where, end)
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
        if isinstance(part, bytes) and part and len(pending) + len(part) < filecopy.CHUNK:
            pending += part
            continue
        at = write_at(dst, pending, at)
        del pending[:]
        if isinstance(part, Splice) and part.source is not None:
            with open_source(part.source) as other:
                copy_range(other.fileno(), dst, part.offset, part.length, at, part.source)
            at += part.length
        elif isinstance(part, Splice):
            if not (copied and part.offset == at):  # else the copy made ahead holds it there
                copy_range(src, dst, part.offset, part.length, at, src_path)
            at += part.length
        else:  # a large part (a tensor given new data), or the final empty one
            at = write_at(dst, part, at)

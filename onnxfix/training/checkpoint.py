"""Write onnxruntime-training checkpoints without holding the weights more than once.

onnxblock's ``save_checkpoint`` takes every parameter serialised (the weights once, as Python
bytes), parses them back into TensorProtos (twice) and builds the checkpoint flatbuffer in
memory (three times): on a 1 GB model that step alone peaked at 3.0 GB. This module builds the
same file, ONNX Runtime's checkpoint schema through the flatbuffers bindings ONNX Runtime ships,
reading each parameter's bytes from the model only while it is written:

- up to :data:`SINGLE_FILE_LIMIT` the checkpoint is one file, as onnxblock writes it: the
  buffer is the only copy of the weights in memory. One file is what onnxruntime-web and the
  mobile packages load from a buffer ("External data with loading from buffer is not supported
  yet", ORT 1.19.2);
- above it (a flatbuffer cannot exceed 2 GiB) the payloads of 1 KiB or more go to
  ``CHECKPOINT.data``, copied kernel-side from the model's file, packed in order with each
  tensor's ``external_data_offset`` in the flatbuffer and ``has_external_data`` set: the layout
  ONNX Runtime 1.19.2 writes itself for a checkpoint over 2 GB (seen: a 2.16 GB one, three
  720 MB tensors at offsets 0, 720000000, 1440000000, a 40-byte one kept inline).

Tests check that ONNX Runtime loads what this writes with the same values, flags and
properties as its own writer's file (tests/training/test_checkpoint.py).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

import onnx
from onnx import external_data_helper

from onnxfix._proto import le_bytes
from onnxfix.dtypes import np_dtype, tensor_to_array
from onnxfix.errors import ArtifactsError
from onnxfix.modelio import filecopy
from onnxfix.modelio.external import checkpoint_data, data_file, past_end
from onnxfix.training.ort import checkpoint_schema

__all__ = [
    "write_checkpoint",
    "read_checkpoint",
    "StoredCheckpoint",
    "StoredParameter",
    "SINGLE_FILE_LIMIT",
    "CHECKPOINT_VERSION",
]

CHECKPOINT_VERSION = 2  # ORT 1.19.2's kCheckpointVersion: what it writes and reads
FILE_IDENTIFIER = b"ODTC"
SINGLE_FILE_LIMIT = (1 << 31) - (64 << 20)  # flatbuffers' 2 GiB, less room for the rest
EXTERNAL_MIN_BYTES = 1024  # smaller payloads stay inline, as ORT keeps them
_PER_TENSOR_SLACK = 64  # table, vtable, alignment, vector lengths


@dataclass(frozen=True)
class _InMemory:
    """A parameter's little-endian bytes, in memory."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    def read(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class _InFile:
    """Where a parameter's little-endian bytes are in a file."""

    length: int
    path: str
    offset: int = 0

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), self.length, self.offset)
        if len(data) != self.length:
            raise ArtifactsError(
                f"{self.path!r} ends before the {self.length} bytes at offset {self.offset} a "
                "parameter's external data points to: the data file is truncated"
            )
        return data


_Payload = Union[_InMemory, _InFile]


def _payload(tensor: onnx.TensorProto, base_dir: str) -> _Payload:
    expected = math.prod(tensor.dims) * np_dtype(tensor.data_type).itemsize
    if external_data_helper.uses_external_data(tensor):
        # The rules for every data file (onnxfix.modelio.external): in base_dir, a regular file.
        info, file = data_file(Path(base_dir), tensor, who=f"parameter {tensor.name!r}")
        length = expected if info.length is None else info.length
        if length != expected:
            raise ArtifactsError(
                f"parameter {tensor.name!r}: its external data is {length} bytes, its shape "
                f"{list(tensor.dims)} and type need {expected}"
            )
        return _InFile(length, os.fspath(file.path), info.offset or 0)
    if tensor.HasField("raw_data"):
        data = tensor.raw_data
    else:  # typed fields (float_data, int64_data...): small tensors made by normalisation
        data = le_bytes(tensor_to_array(tensor))
    if len(data) != expected:
        raise ArtifactsError(
            f"parameter {tensor.name!r} holds {len(data)} bytes; its shape {list(tensor.dims)} "
            f"and type need {expected}"
        )
    return _InMemory(data)


def write_checkpoint(
    path: str | os.PathLike,
    trainable: Sequence[onnx.TensorProto],
    frozen: Sequence[onnx.TensorProto],
    *,
    base_dir: str | os.PathLike = ".",
    properties: Mapping[str, str] | None = None,
    nominal: bool = False,
    single_file_limit: int = SINGLE_FILE_LIMIT,
) -> None:
    """Write an ORT training checkpoint of ``trainable`` and ``frozen`` parameters to ``path``.

    Parameters whose data is external (onnx's ``location``/``offset``/``length``) are read from
    ``base_dir``. ``properties`` become the checkpoint's string properties (what
    ``CheckpointState.properties`` returns). A nominal checkpoint records names, shapes and
    types only, as ``onnxblock.save_checkpoint(..., nominal_checkpoint=True)`` does.
    """
    path = Path(path)
    for tensor in (*trainable, *frozen):
        if tensor.data_type == onnx.TensorProto.STRING:
            raise ArtifactsError(f"parameter {tensor.name!r} is a string tensor; it cannot train")
    names = [t.name for t in (*trainable, *frozen)]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ArtifactsError(f"parameters named more than once: {', '.join(twice)}")
    base = os.fspath(base_dir)
    payloads = {t.name: _payload(t, base) for t in (*trainable, *frozen)} if not nominal else {}
    total = sum(p.length for p in payloads.values())
    external = total > single_file_limit
    data_path = path.with_name(path.name + ".data")
    offsets: dict[str, int] = {}
    if external:
        offsets = _write_external_data(data_path, names, payloads)
    inline = {n: p for n, p in payloads.items() if n not in offsets}

    import flatbuffers

    size = sum(p.length for p in inline.values()) + sum(
        len(t.name.encode()) + 8 * len(t.dims) + _PER_TENSOR_SLACK for t in (*trainable, *frozen)
    )
    size += sum(len(k.encode()) + len(v.encode()) + 32 for k, v in (properties or {}).items())
    # Sized up front so the builder never grows: growing copies the whole buffer.
    builder = flatbuffers.Builder(size + 4096)
    fbs = checkpoint_schema()
    groups = []
    for group in (trainable, frozen):
        tensors = [
            _tensor(builder, fbs, t, inline.get(t.name), offsets.get(t.name), nominal)
            for t in group
        ]
        groups.append(_vector(builder, tensors))
    props = _property_bag(builder, fbs, properties) if properties else None

    fbs.ModuleState.Start(builder)
    fbs.ModuleState.AddRequiresGradParams(builder, groups[0])
    fbs.ModuleState.AddFrozenParams(builder, groups[1])
    fbs.ModuleState.AddIsNominalState(builder, nominal)
    fbs.ModuleState.AddHasExternalData(builder, external)
    module_state = fbs.ModuleState.End(builder)
    fbs.Checkpoint.Start(builder)
    fbs.Checkpoint.AddVersion(builder, CHECKPOINT_VERSION)
    fbs.Checkpoint.AddModuleState(builder, module_state)
    if props is not None:
        fbs.Checkpoint.AddPropertyBag(builder, props)
    builder.Finish(fbs.Checkpoint.End(builder), file_identifier=FILE_IDENTIFIER)
    with open(path, "wb") as f:  # the finished bytes, written from the builder's own buffer
        with memoryview(builder.Bytes)[builder.Head() :] as view:
            f.write(view)
    if not external:
        data_path.unlink(missing_ok=True)


def _write_external_data(
    data_path: Path, names: list[str], payloads: Mapping[str, _Payload]
) -> dict[str, int]:
    """Pack the payloads of EXTERNAL_MIN_BYTES or more into ``data_path``; their offsets."""
    offsets: dict[str, int] = {}
    at = 0
    with open(data_path, "wb") as out:
        for name in names:
            payload = payloads[name]
            if payload.length < EXTERNAL_MIN_BYTES:
                continue
            offsets[name] = at
            if isinstance(payload, _InMemory):
                os.pwrite(out.fileno(), payload.data, at)
            else:
                with open(payload.path, "rb") as src:
                    filecopy.copy_range(
                        src.fileno(), out.fileno(), payload.offset, payload.length, at, payload.path
                    )
            at += payload.length
        out.truncate(at)
    return offsets


def _tensor(
    builder,
    fbs,
    tensor: onnx.TensorProto,
    payload: _Payload | None,
    offset: int | None,
    nominal: bool,
):
    name = builder.CreateString(tensor.name)
    doc = builder.CreateString(tensor.doc_string) if tensor.doc_string else None
    # A nominal checkpoint has neither shapes nor values (ORT 1.19.2 writes both empty): the
    # training session gives them when it loads one.
    shape = tensor.dims if not nominal else ()
    fbs.Tensor.StartDimsVector(builder, len(shape))
    for d in reversed(shape):
        builder.PrependInt64(d)
    dims = builder.EndVector()
    if nominal:
        raw = builder.CreateByteVector(b"")
    else:
        raw = builder.CreateByteVector(payload.read()) if payload is not None else None
    fbs.Tensor.Start(builder)
    fbs.Tensor.AddName(builder, name)
    if doc is not None:
        fbs.Tensor.AddDocString(builder, doc)
    fbs.Tensor.AddDims(builder, dims)
    fbs.Tensor.AddDataType(builder, tensor.data_type)
    if raw is not None:
        fbs.Tensor.AddRawData(builder, raw)
    if offset is not None:
        fbs.Tensor.AddExternalDataOffset(builder, offset)
    return fbs.Tensor.End(builder)


def _vector(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _property_bag(builder, fbs, properties: Mapping[str, str]) -> int:
    entries = []
    for key in sorted(properties):
        name, value = builder.CreateString(key), builder.CreateString(properties[key])
        fbs.StringProperty.Start(builder)
        fbs.StringProperty.AddName(builder, name)
        fbs.StringProperty.AddValue(builder, value)
        entries.append(fbs.StringProperty.End(builder))
    strings = _vector(builder, entries)
    fbs.PropertyBag.Start(builder)
    fbs.PropertyBag.AddStrings(builder, strings)
    return fbs.PropertyBag.End(builder)


@dataclass(frozen=True)
class StoredParameter:
    """One parameter of a checkpoint file and where its bytes lie, without reading them."""

    name: str
    dims: tuple[int, ...]
    data_type: int
    trainable: bool
    path: Path  # the checkpoint, or CHECKPOINT.data for a split one
    offset: int
    length: int

    def read(self) -> bytes:
        return _InFile(self.length, os.fspath(self.path), self.offset).read()


@dataclass(frozen=True)
class StoredCheckpoint:
    parameters: dict[str, StoredParameter]
    properties: dict[str, str]
    nominal: bool


class _Reader:
    """Just enough of the flatbuffers format to walk a checkpoint with ``pread``.

    ONNX Runtime's generated readers need the whole buffer in memory (or mapped, which on
    ext4 maps up to 2 MiB per touched page); the tables sit between the payloads, so reading
    them a few bytes at a time costs one system call each and no memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "rb")
        self.size = os.fstat(self._f.fileno()).st_size

    def close(self) -> None:
        self._f.close()

    def _unpack(self, fmt: str, at: int):
        size = struct.calcsize(fmt)
        self._within(at, size)
        return struct.unpack(fmt, os.pread(self._f.fileno(), size, at))[0]

    def _within(self, at: int, size: int) -> None:
        """Bytes ``at`` to ``at + size`` are in the file: every offset in it is checked before
        it is followed, so a flipped byte is an error, never a read elsewhere or a huge one."""
        if at < 0 or size < 0 or at + size > self.size:
            raise ArtifactsError(
                f"checkpoint {os.fspath(self.path)!r} is truncated or not an ONNX Runtime "
                "checkpoint; make the artifacts again"
            )

    def damaged(self, what: str) -> ArtifactsError:
        return ArtifactsError(
            f"checkpoint {os.fspath(self.path)!r} is damaged: {what}; make the artifacts again"
        )

    def root(self) -> int:
        if os.pread(self._f.fileno(), 4, 4) != FILE_IDENTIFIER:
            raise ArtifactsError(
                f"{os.fspath(self.path)!r} is not an ONNX Runtime training checkpoint (no "
                f"{FILE_IDENTIFIER.decode()} identifier)"
            )
        return self._unpack("<I", 0)

    def field(self, table: int, slot: int) -> int | None:
        """Position of field ``slot`` (0-based) of the table at ``table``, None if absent."""
        vtable = table - self._unpack("<i", table)
        entry = 4 + 2 * slot
        if entry >= self._unpack("<H", vtable):
            return None
        offset = self._unpack("<H", vtable + entry)
        return table + offset if offset else None

    def scalar(self, table: int, slot: int, fmt: str, default):
        at = self.field(table, slot)
        return default if at is None else self._unpack(fmt, at)

    def target(self, table: int, slot: int) -> int | None:
        at = self.field(table, slot)
        return None if at is None else at + self._unpack("<I", at)

    def vector(self, table: int, slot: int, item: int = 1) -> tuple[int, int]:
        """(position of the first element, length) of a vector field of ``item``-byte
        elements, all of them in the file; (0, 0) if absent."""
        at = self.target(table, slot)
        if at is None:
            return 0, 0
        count = self._unpack("<I", at)
        self._within(at + 4, count * item)
        return at + 4, count

    def tables(self, table: int, slot: int) -> list[int]:
        start, count = self.vector(table, slot, 4)
        return [start + 4 * i + self._unpack("<I", start + 4 * i) for i in range(count)]

    def string(self, table: int, slot: int) -> str:
        start, count = self.vector(table, slot)
        try:
            return os.pread(self._f.fileno(), count, start).decode() if count else ""
        except UnicodeDecodeError:
            raise self.damaged(f"a name or property at byte {start} is not UTF-8 text") from None


def read_checkpoint(path: str | os.PathLike) -> StoredCheckpoint:
    """The parameters of the checkpoint at ``path`` (and where their bytes are), its string
    properties and whether it is nominal; no parameter's values are read."""
    path = Path(path)
    reader = _Reader(path)
    try:
        root = reader.root()
        version = reader.scalar(root, 0, "<i", 0)
        if version != CHECKPOINT_VERSION:
            raise ArtifactsError(
                f"checkpoint {os.fspath(path)!r} has format version {version}; onnxfix reads "
                f"version {CHECKPOINT_VERSION} (onnxruntime-training 1.19)"
            )
        state = reader.target(root, 1)
        parameters: dict[str, StoredParameter] = {}
        nominal = external = False
        if state is not None:
            nominal = bool(reader.scalar(state, 2, "<B", 0))
            external = bool(reader.scalar(state, 3, "<B", 0))
            for slot, trainable in ((0, True), (1, False)):
                for tensor in reader.tables(state, slot):
                    p = _stored(reader, tensor, trainable, external, nominal)
                    parameters[p.name] = p
        properties = {}
        bag = reader.target(root, 3)
        if bag is not None:
            for entry in reader.tables(bag, 2):
                properties[reader.string(entry, 0)] = reader.string(entry, 1)
    finally:
        reader.close()
    if external:
        parameters = _in_data_file(path, parameters)
    return StoredCheckpoint(parameters, properties, nominal)


def _in_data_file(path: Path, parameters: dict[str, StoredParameter]) -> dict[str, StoredParameter]:
    """The parameters of a split checkpoint, those in ``CHECKPOINT.data`` pointed at its real
    path once it is checked like every data file (:mod:`onnxfix.modelio.external`: in the
    checkpoint's folder, a regular file, not the checkpoint) and holds each one's bytes."""
    split = [p for p in parameters.values() if p.path != path]
    if not split:
        return parameters
    data = checkpoint_data(path)
    for p in split:
        if p.offset + p.length > data.size:
            where = path.with_name(path.name + ".data")
            raise ArtifactsError(
                past_end(where, data.size, f"parameter {p.name!r}", p.offset, p.length)
            )
    return {n: p if p.path == path else replace(p, path=data.path) for n, p in parameters.items()}


def _stored(
    reader: _Reader, tensor: int, trainable: bool, external: bool, nominal: bool
) -> StoredParameter:
    """One parameter's record, its shape and type checked against the bytes that hold it."""
    name = reader.string(tensor, 0)
    start, count = reader.vector(tensor, 2, 8)
    dims = tuple(reader._unpack("<q", start + 8 * i) for i in range(count))
    data_type = reader.scalar(tensor, 3, "<i", 0)
    if any(d < 0 for d in dims):
        raise reader.damaged(f"parameter {name!r} has dims {list(dims)}")
    if data_type not in _NUMERIC:
        raise reader.damaged(f"parameter {name!r} has element type {data_type}, not a number type")
    size = math.prod(dims) * np_dtype(data_type).itemsize
    offset = reader.scalar(tensor, 6, "<q", -1)
    if external and offset >= 0:
        where, at = reader.path.with_name(reader.path.name + ".data"), offset
        length = size
    else:
        where = reader.path
        at, length = reader.vector(tensor, 4)
        if length != size and not (nominal and length == 0):
            raise reader.damaged(
                f"parameter {name!r} holds {length} bytes, its dims {list(dims)} and type need "
                f"{size}"
            )
    return StoredParameter(name, dims, data_type, trainable, where, at, length)


# The element types a parameter can have: numbers, not strings.
_NUMERIC = frozenset(
    getattr(onnx.TensorProto, t)
    for t in "FLOAT FLOAT16 BFLOAT16 DOUBLE INT8 UINT8 INT16 UINT16 INT32 UINT32 INT64 UINT64 "
    "BOOL".split()
)

"""Which data files a model may name, checked before any of them is opened.

A tensor kept in external data names a file (``location``, relative to the model's folder) and
a byte range in it (``offset``, ``length``: strings in the proto). onnx's own loader has
refused locations that leave the model's folder since its 2024 path-traversal fixes; onnxfix
reads, copies and (``--in-place``) writes data files with its own streaming code, so it
enforces the rules here, and every place that opens a data file goes through this module:

- the location is relative, and its real path (every symbolic link followed) lies inside the
  real path of the model's folder;
- it is a regular file, found by ``stat`` (a FIFO is never opened, a folder never read), and
  not the model file itself (compared by device and inode, so no spelling or hard link
  gets round it);
- ``offset`` and ``length`` are byte counts (ASCII digits only), the file holds
  ``offset + length`` bytes, and ``length`` is what the tensor's shape and type take; all
  before a byte is read or allocated.

An artifacts folder names files by convention (a split checkpoint's ``checkpoint.data``):
:func:`checkpoint_data` holds it to the same rules. Every refusal is one line naming the
file, the tensor and the location, worded once here for every command.

Imports only the standard library (numpy and onnx when a tensor's size is worked out), so
:mod:`onnxfix.modelio.reader` can check the copy-ahead's guess before onnx is imported.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from onnxfix.errors import ModelFileError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "DataFile",
    "ExternalData",
    "check_embedded",
    "check_location",
    "check_payloads",
    "checkpoint_data",
    "data_file",
    "external_data",
    "external_entries",
    "for_writing",
    "is_external",
    "past_end",
    "payload_size",
    "check_size",
]

_EXTERNAL = 1  # TensorProto.EXTERNAL
_CORRUPT = "the model is corrupt, export it again"


class _Splice(Protocol):  # reader.Splice, without importing it (reader imports this module)
    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...


@dataclass(frozen=True)
class DataFile:
    """A data file that passed the checks: open ``path`` (its real path), never the location."""

    path: Path
    size: int
    links: int  # hard links: more than one and a write in place changes the other names too


@dataclass(frozen=True)
class ExternalData:
    """Where one tensor's bytes are: ``length`` bytes at ``offset`` in ``file``, all there."""

    who: str  # "tensor 'conv1.weight' of 'models/m.onnx'", for messages
    location: str
    file: DataFile
    offset: int
    length: int

    def read(self) -> bytes:
        """The bytes, read now (the file was checked to hold them)."""
        try:
            with open(self.file.path, "rb") as f:
                data = os.pread(f.fileno(), self.length, self.offset)
                while len(data) < self.length:  # short reads: big ranges, or the file shrank
                    more = os.pread(f.fileno(), self.length - len(data), self.offset + len(data))
                    if not more:
                        raise ModelFileError(
                            f"{self.who} names external data {self.location!r}, which ended at "
                            f"byte {self.offset + len(data)} while it was read; it changed while "
                            "onnxfix was working, run the command again"
                        )
                    data += more
        except OSError as e:  # no permission to read, an I/O error
            raise ModelFileError(
                f"{self.who} names external data {self.location!r}, which cannot be read "
                f"({e.strerror or e}); make the data file readable"
            ) from e
        return data


@dataclass(frozen=True)
class _Namer:
    """Who names a data file, for the messages: a model's tensor, or a checkpoint."""

    who: str  # "tensor 'conv1.weight' of 'models/m.onnx'"
    names: str  # "names external data"
    owner: str  # "model" or "checkpoint"
    missing: str | None = None  # the whole message for a file that is not there, if worded so

    def say(self, location: str, problem: str) -> str:
        return f"{self.who} {self.names} {location!r}{problem}"

    @property
    def fix(self) -> str:
        if self.owner == "model":
            return "Move the data file beside the model and set its location to its name"
        return "Put the data file itself beside the checkpoint, or make the artifacts again"

    @property
    def point(self) -> str:
        if self.owner == "model":
            return "set its location to the name of the data file beside the model"
        return "put the data file itself beside the checkpoint, or make the artifacts again"


def _tensor(model: Path, tensor: onnx.TensorProto) -> str:
    return f"tensor {tensor.name!r} of {str(model)!r}"


def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's bytes are in a data file (onnx's ``uses_external_data``)."""
    return tensor.HasField("data_location") and tensor.data_location == _EXTERNAL


def _data_file(folder: Path, location: str, namer: _Namer, *, own: Path | None = None) -> DataFile:
    """``location`` resolved in ``folder``, checked: inside it, a regular file, not ``own``."""
    shown = str(folder)
    if os.path.isabs(location):
        raise ModelFileError(
            namer.say(
                location,
                f", an absolute path; onnxfix reads data files only from the {namer.owner}'s "
                f"own folder {shown!r}, by a location relative to it. {namer.fix}",
            )
        )
    if "\0" in location:
        raise ModelFileError(
            namer.say(location, f", which holds a NUL byte: no file has that name; {_CORRUPT}")
        )
    root = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, real]) != root:
        raise ModelFileError(
            namer.say(
                location,
                f", which is outside the {namer.owner}'s folder {shown!r}; onnxfix reads data "
                f"files only from the {namer.owner}'s own folder. {namer.fix}",
            )
        )
    try:
        st = os.stat(real)  # never open: a FIFO would block, a device could be anything
    except FileNotFoundError:
        if namer.missing is not None:
            raise ModelFileError(namer.missing) from None
        raise ModelFileError(
            namer.say(
                location,
                f", which does not exist in the {namer.owner}'s folder {shown!r}; copy the data "
                f"file next to the {namer.owner}",
            )
        ) from None
    except OSError as e:  # a loop of links, a name too long, no permission
        raise ModelFileError(
            namer.say(
                location,
                f", which cannot be read ({e.strerror}); copy the data file next to the "
                f"{namer.owner}",
            )
        ) from e
    if not stat.S_ISREG(st.st_mode):
        what = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ModelFileError(
            namer.say(location, f", which is {what}, not a data file; {namer.point}")
        )
    if own is not None:
        try:
            mine = os.stat(own)
        except OSError:
            mine = None
        if mine is not None and (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino):
            raise ModelFileError(
                namer.say(location, f", which is the {namer.owner} file itself; {namer.point}")
            )
    return DataFile(Path(real), st.st_size, st.st_nlink)


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class _Entries:
    location: str
    offset: int | None
    length: int | None


def external_entries(who: str, tensor: onnx.TensorProto) -> _Entries:
    """The tensor's ``location``, ``offset`` and ``length``, each given at most once and the
    numbers byte counts (``int()`` would take ' 5', '+5' and '5_000': no reader agrees);
    ``who`` names the tensor in a refusal."""
    found: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in ("location", "offset", "length"):
            if entry.key in found:
                raise ModelFileError(f"{who} gives its external data {entry.key} twice; {_CORRUPT}")
            found[entry.key] = entry.value
    location = found.get("location", "")
    if not location:
        raise ModelFileError(f"{who} is kept in external data but names no location; {_CORRUPT}")
    numbers: dict[str, int | None] = {}
    for key in ("offset", "length"):
        value = found.get(key)
        if value is not None and not (value.isascii() and value.isdigit()):
            raise ModelFileError(
                f"{who} has external data {key} {value!r}, which is not a byte count (a whole "
                f"number, 0 or more); {_CORRUPT}"
            )
        numbers[key] = int(value) if value is not None else None
    return _Entries(location, numbers["offset"], numbers["length"])


def data_file(
    folder: Path, tensor: onnx.TensorProto, *, who: str, own: Path | None = None
) -> tuple[_Entries, DataFile]:
    """The tensor's external data entries and its data file in ``folder``, checked: inside
    it, a regular file, not ``own`` (the model's file). The byte range is not checked: for
    tensors that are not a model's own (:func:`external_data` is for those)."""
    entries = external_entries(who, tensor)
    namer = _Namer(who, "names external data", "model")
    return entries, _data_file(folder, entries.location, namer, own=own)


def external_data(
    model: Path,
    tensor: onnx.TensorProto,
    *,
    sized: bool = True,
    files: dict[str, DataFile] | None = None,
) -> ExternalData:
    """Where ``tensor`` of the model at ``model`` keeps its bytes, every rule checked.

    With ``sized``, the length must also be what the tensor's shape and type take (not when
    the caller gives the tensor new bytes of its own). ``files`` caches the data files checked
    so far, by location, for a walk over a whole model.
    """
    who = _tensor(model, tensor)
    entries = external_entries(who, tensor)
    location = entries.location
    file = files.get(location) if files is not None else None
    if file is None:
        missing = (  # worded so since onnxfix 0.1
            f"{str(model)!r} keeps tensor {tensor.name!r} in {location!r}, which is not in "
            f"{str(model.parent)!r}; copy the data file next to the model"
        )
        namer = _Namer(who, "names external data", "model", missing)
        file = _data_file(model.parent, location, namer, own=model)
        if files is not None:
            files[location] = file
    offset = entries.offset or 0
    length = entries.length
    if length is None:  # the rest of the file, as onnx reads it
        length = file.size - offset if offset <= file.size else (payload_size(tensor) or 0)
    if offset + length > file.size:
        raise ModelFileError(
            past_end(model.parent / location, file.size, f"tensor {tensor.name!r}", offset, length)
        )
    if sized:
        check_size(model, tensor, length, location=location)
    return ExternalData(who, location, file, offset, length)


def for_writing(model: Path, tensor: onnx.TensorProto) -> ExternalData:
    """Where ``tensor``'s bytes are, to be overwritten in place (``--in-place``): checked as
    for reading, and the data file must have no other name, since a write through one hard
    link changes every other, wherever it is. Its length is the caller's to compare."""
    found = external_data(model, tensor, sized=False)
    if found.file.links > 1:
        raise ModelFileError(
            f"{_tensor(model, tensor)} names external data {found.location!r}, which has other "
            "names too (hard links); writing it in place would change them all. Write a copy "
            "with -o"
        )
    return found


def past_end(path: Path, size: int, what: str, offset: int, length: int) -> str:
    """The refusal of a byte range past the end of its data file (worded so since 0.1)."""
    where = "inside" if offset < size else "before"
    return (
        f"{str(path)!r} ends at byte {size}, {where} {what} (bytes {offset} to "
        f"{offset + length}); the data file is truncated, copy it again"
    )


# Element types whose values pack into fewer bits than a byte: bits per value.
_PACKED = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


def payload_size(tensor: onnx.TensorProto) -> int | None:
    """The bytes the tensor's shape and type take as raw data; None when the type has no
    fixed size (strings, types this onnx does not know)."""
    import onnx

    from onnxfix.dtypes import np_dtype

    count = math.prod(tensor.dims)
    data_type = tensor.data_type
    for name, bits in _PACKED.items():
        if data_type == getattr(onnx.TensorProto, name, None):
            return -(-count * bits // 8)
    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    if data_type in (
        getattr(onnx.TensorProto, "FLOAT6E2M3", None),
        getattr(onnx.TensorProto, "FLOAT6E3M2", None),
    ):
        return None
    try:
        return count * np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def check_size(
    model: Path, tensor: onnx.TensorProto, length: int, *, location: str | None = None
) -> None:
    """``length`` bytes (at ``location``, or embedded) are what the tensor's shape and type
    take, so that no array is made of the wrong bytes and nothing is allocated for a shape
    the bytes do not back."""
    from onnxfix.dtypes import dtype_name

    who = _tensor(model, tensor)
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelFileError(f"{who} has shape {dims}, with a negative dim; {_CORRUPT}")
    expected = payload_size(tensor)
    if expected is None or expected == length:
        return
    held = (
        f"has {length} bytes of external data in {location!r}"
        if location is not None
        else f"holds {length} bytes"
    )
    raise ModelFileError(
        f"{who} {held}, but its shape {dims} and type {dtype_name(tensor.data_type)} need "
        f"{expected}; {_CORRUPT}"
    )


# Where each element type keeps its values without raw_data (onnx.proto), and how many
# entries n values take there: complex numbers take two, 4-bit values share an int32.
_TYPED = {
    **{t: ("float_data", 1) for t in ("FLOAT",)},
    **{t: ("float_data", 2) for t in ("COMPLEX64",)},
    **{t: ("double_data", 1) for t in ("DOUBLE",)},
    **{t: ("double_data", 2) for t in ("COMPLEX128",)},
    **{t: ("int64_data", 1) for t in ("INT64",)},
    **{t: ("uint64_data", 1) for t in ("UINT32", "UINT64")},
    **{
        t: ("int32_data", 1)
        for t in (
            "INT32 INT16 INT8 UINT16 UINT8 BOOL FLOAT16 BFLOAT16 FLOAT8E4M3FN FLOAT8E4M3FNUZ "
            "FLOAT8E5M2 FLOAT8E5M2FNUZ FLOAT8E8M0"
        ).split()
    },
    **{t: ("int32_data", 0.5) for t in ("INT4", "UINT4", "FLOAT4E2M1")},
}


def check_embedded(model: Path, tensor: onnx.TensorProto) -> None:
    """An embedded tensor's values (``raw_data``, or the typed field its type uses) are as
    many as its shape takes."""
    if tensor.HasField("raw_data"):
        check_size(model, tensor, len(tensor.raw_data))
        return
    import onnx

    typed = [e for n, e in _TYPED.items() if getattr(onnx.TensorProto, n, None) == tensor.data_type]
    if not typed:
        return
    field, per_value = typed[0]
    count = math.prod(tensor.dims)
    expected = math.ceil(count * per_value)
    held = len(getattr(tensor, field))
    if any(d < 0 for d in tensor.dims) or held != expected:
        raise ModelFileError(
            f"{_tensor(model, tensor)} holds {held} values in {field}, but its shape "
            f"{list(tensor.dims)} needs {expected}; {_CORRUPT}"
        )


def check_payloads(
    model: Path, tensors: Iterable[onnx.TensorProto], splices: Mapping[str, _Splice]
) -> dict[str, DataFile]:
    """Every tensor's stored bytes, external or embedded (in ``model``'s file, where
    ``splices`` says for the light ones), are where the model says and the size its shape and
    type take; the data files, by location. Nothing is read."""
    files: dict[str, DataFile] = {}
    light: set[str] = set()
    for tensor in tensors:
        if is_external(tensor):
            external_data(model, tensor, files=files)
            continue
        splice = splices.get(tensor.name)
        if splice is not None and not tensor.raw_data and tensor.name not in light:
            light.add(tensor.name)  # only the first of a name is light (see reader)
            check_size(model, tensor, splice.length)
        else:
            check_embedded(model, tensor)
    return files


def check_location(model: Path, location: str) -> DataFile:
    """A location the model at ``model`` names, checked as for a tensor: for a guess made
    from the file before the model is parsed (the copy ahead), or a record naming a data
    file of the model (a journal)."""
    namer = _Namer(f"a tensor of {str(model)!r}", "names external data", "model")
    return _data_file(model.parent, location, namer, own=model)


def checkpoint_data(checkpoint: Path) -> DataFile:
    """The data file of a split checkpoint (``CHECKPOINT.data``, ONNX Runtime's name for it),
    checked like a model's data files: in the checkpoint's folder, a regular file, not the
    checkpoint itself."""
    namer = _Namer(f"checkpoint {str(checkpoint)!r}", "keeps its values in", "checkpoint")
    return _data_file(checkpoint.parent, checkpoint.name + ".data", namer, own=checkpoint)

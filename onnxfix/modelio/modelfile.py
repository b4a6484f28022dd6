"""Load and save ONNX model files without materialising their weights.

A :class:`ModelFile` holds the model's structure (nodes, names, dims, small tensors) and knows
where every large tensor's bytes live: in the source ``.onnx`` file (see :mod:`onnxfix.modelio.reader`) or
in external data files. Only the tensors a command changes are ever read or written by Python;
saving copies every other byte range with the kernel (``os.copy_file_range``), so fixing one
kernel in a 1 GB model costs about a file copy.

Outputs are written under temporary names in the destination folder, checked, and renamed into
place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from onnxfix._proto import from_le_bytes, le_bytes
from onnxfix.dtypes import np_dtype, tensor_to_array
from onnxfix.errors import ModelFileError
from onnxfix.modelio import journal, reader
from onnxfix.modelio.external import (
    DataFile,
    ExternalData,
    check_embedded,
    check_payloads,
    check_size,
    external_data,
    external_entries,
    is_external,
)
from onnxfix.modelio.targets import Read

__all__ = [
    "ModelFile",
    "all_tensors",
    "data_locations",
    "dereferencing_payloads",
    "inline_payloads",
    "load_model",
    "payload_bytes",
    "point_external",
    "reference_payloads",
    "referencing_payloads",
]

logger = logging.getLogger(__name__)

# Tensors at least this big go to the external data file when the model keeps weights there.
EXTERNAL_THRESHOLD = 1024


@dataclass
class ModelFile:
    """An ONNX model read from ``path``; large payloads stay on disk until asked for."""

    path: Path
    model: onnx.ModelProto
    # Embedded payloads still in ``path``, or (a splice with a source) new ones in another file.
    splices: dict[str, reader.Splice]
    # External tensors given new bytes: the bytes, or where they lie in another file.
    changed: dict[str, bytes | reader.Splice] = field(default_factory=dict)
    _first: dict[str, onnx.TensorProto] | None = field(default=None, repr=False, compare=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def uses_external_data(self) -> bool:
        return any(external_data_helper.uses_external_data(t) for t in all_tensors(self.model))

    def read_array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The tensor's values, read from wherever they are stored.

        External data is read only from a checked data file (:mod:`onnxfix.modelio.external`),
        and every payload must be the size the tensor's shape and type take.
        """
        if tensor.name in self.changed:
            data = payload_bytes(self.path, self.changed[tensor.name])
        elif tensor.name in self.splices and not tensor.raw_data:
            splice = self.splices[tensor.name]
            check_size(self.path, tensor, splice.length)
            data = reader.read_payload(self.path, splice)
        elif is_external(tensor):
            data = external_data(self.path, tensor).read()
        else:
            check_embedded(self.path, tensor)
            return tensor_to_array(tensor)
        return _from_bytes(tensor, data)

    def external(
        self,
        tensor: onnx.TensorProto,
        *,
        sized: bool = True,
        files: dict[str, DataFile] | None = None,
    ) -> ExternalData:
        """Where the external ``tensor`` keeps its bytes, checked (see
        :func:`onnxfix.modelio.external.external_data`; ``files``: the data files checked
        already, from :meth:`data_files`)."""
        return external_data(self.path, tensor, sized=sized, files=files)

    def data_files(self, model: onnx.ModelProto | None = None) -> dict[str, DataFile]:
        """The data files ``model`` (default: this model) names, by location, each checked
        (inside the model's folder, a regular file, not the model): open their ``path``."""
        files: dict[str, DataFile] = {}
        for tensor in all_tensors(model if model is not None else self.model):
            if is_external(tensor):
                external_data(self.path, tensor, sized=False, files=files)
        return files

    def write_array(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Give ``tensor`` new values of the same dtype and shape (the bytes land on save)."""
        data = le_bytes(array)
        if external_data_helper.uses_external_data(tensor):
            self.changed[tensor.name] = data
            return
        self.splices.pop(tensor.name, None)
        _set_raw(tensor, data)

    def write_from(self, tensor: onnx.TensorProto, source: str | os.PathLike, offset: int) -> None:
        """Give ``tensor`` the bytes at ``offset`` in ``source`` (as many as it holds now).

        They are copied kernel-side when the model is saved, never held in memory.
        """
        length = math.prod(tensor.dims) * np_dtype(tensor.data_type).itemsize
        splice = reader.Splice(offset, length, os.fspath(source))
        if external_data_helper.uses_external_data(tensor):
            self.changed[tensor.name] = splice
            return
        if self._first is None:  # once: export gives every parameter in turn
            self._first = {}
            for t in self.model.graph.initializer:
                self._first.setdefault(t.name, t)
        first = self._first.get(tensor.name)
        # Only the first top-level initializer of a name can be spliced (see wire), and small
        # payloads never are (read_light_model): those few bytes are read now.
        if first is not tensor or length < EXTERNAL_THRESHOLD:
            if first is tensor:
                self.splices.pop(tensor.name, None)
            _set_raw(tensor, reader.read_payload(self.path, splice))
            return
        _set_raw(tensor, b"")
        self.splices[tensor.name] = splice


def payload_bytes(path: Path, data: bytes | reader.Splice) -> bytes:
    return reader.read_payload(path, data) if isinstance(data, reader.Splice) else data


def _from_bytes(tensor: onnx.TensorProto, data: bytes) -> np.ndarray:
    return from_le_bytes(data, np_dtype(tensor.data_type), tensor.dims)


def _set_raw(tensor: onnx.TensorProto, data: bytes) -> None:
    for typed in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(typed)
    tensor.raw_data = data


def all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Every TensorProto in ``model``: initializers, attributes, subgraphs (onnx's own walk)."""
    return external_data_helper._get_all_tensors(model)


def load_model(path: str | os.PathLike, *, need_data: bool = True) -> ModelFile:
    """Read ``path``'s structure; weights embedded in it or external stay where they are.

    With ``need_data`` (the default) every payload is checked before any is read: each data
    file the model names is a regular file inside the model's folder (not the model itself) that
    holds the tensor's bytes, and every payload, external or embedded, is the size its tensor's
    shape and type take (:func:`onnxfix.modelio.external.check_payloads`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    model, splices = reader.read_light_model(path)
    # A change to this model that a killed run left half done is finished or undone first.
    journal.recover(path, lambda: data_locations(model))
    if need_data:
        check_payloads(path, all_tensors(model), splices)
    return ModelFile(path=path, model=model, splices=splices)


def referencing_payloads(mf: ModelFile) -> onnx.ModelProto:
    """A copy of ``mf.model`` in which each payload still in ``mf.path`` is an external reference.

    The reference names the file itself (``location`` = its name, with the payload's offset and
    length), so the copy is a valid model with no weight in memory, for any reader that takes
    the file's folder as the base for external data: onnx.checker, shape inference and ONNX
    Runtime given a path there, or given the proto with that folder as the current directory.
    """
    model = onnx.ModelProto()
    model.CopyFrom(mf.model)
    reference_payloads(model, mf.splices, mf.path.name)
    return model


def dereferencing_payloads(model: onnx.ModelProto, mf: ModelFile) -> ModelFile:
    """The inverse of :func:`referencing_payloads`, for a copy of ``model`` (say, after changes
    that kept some of those references): each reference still pointing at a payload of
    ``mf.path`` becomes a splice again, so saving copies it kernel-side."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    kept: dict[str, reader.Splice] = {}
    for tensor in model_copy.graph.initializer:
        splice = mf.splices.get(tensor.name)
        if (
            splice is None
            or tensor.name in kept
            or not external_data_helper.uses_external_data(tensor)
        ):
            continue
        info = external_entries(f"tensor {tensor.name!r} of {str(mf.path)!r}", tensor)
        if (info.location, info.offset, info.length) == (
            mf.path.name,
            splice.offset,
            splice.length,
        ):
            del tensor.external_data[:]
            tensor.ClearField("data_location")
            tensor.raw_data = b""
            kept[tensor.name] = splice
    return ModelFile(mf.path, model_copy, kept)


def inline_payloads(mf: ModelFile, model: onnx.ModelProto) -> None:
    """Put every payload of ``model`` (``mf.model`` or a model made from it) into the proto, as
    ``onnx.load`` would: the light initializers' bytes from ``mf.path``, the references into
    ``mf.path`` that :func:`referencing_payloads` made, and external data, each data file
    checked (:mod:`onnxfix.modelio.external`) rather than left to onnx's own loader, whose
    checks vary with its version. For the few places that need the weights in memory."""
    done: set[str] = set()
    for tensor in model.graph.initializer:  # only top-level ones are light (see wire)
        splice = mf.splices.get(tensor.name)
        if splice is None or tensor.name in done or tensor.raw_data or is_external(tensor):
            continue
        done.add(tensor.name)
        tensor.raw_data = reader.read_payload(mf.path, splice)
    own = {(s.offset, s.length) for s in mf.splices.values() if s.source is None}
    for tensor in all_tensors(model):
        if not is_external(tensor):
            continue
        info = external_entries(f"tensor {tensor.name!r} of {str(mf.path)!r}", tensor)
        if info.location == mf.path.name and (info.offset, info.length) in own:
            data = reader.read_payload(mf.path, reader.Splice(info.offset or 0, info.length or 0))
        else:
            data = external_data(mf.path, tensor).read()
        del tensor.external_data[:]
        tensor.ClearField("data_location")
        tensor.raw_data = data


def reference_payloads(
    model: onnx.ModelProto, splices: Mapping[str, reader.Splice], location: str
) -> None:
    done: set[str] = set()
    for tensor in model.graph.initializer:  # only top-level ones are light (see wire)
        splice = splices.get(tensor.name)
        if splice is None or tensor.name in done or tensor.raw_data:
            continue
        if splice.source is not None:
            raise ValueError(f"{tensor.name!r}: its payload is in {splice.source!r}, not here")
        done.add(tensor.name)  # with duplicate names only the first is light
        tensor.ClearField("raw_data")
        point_external(tensor, location, splice.offset, splice.length)


def point_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    # onnx's set_external_data insists on raw_data being present; a light tensor has none.
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def data_locations(model: onnx.ModelProto) -> Iterator[str]:
    """Each external data file ``model`` names, once, found lazily."""
    seen: set[str] = set()
    for tensor in all_tensors(model):
        if is_external(tensor):
            location = _location(tensor)
            if location not in seen:
                seen.add(location)
                yield location


def _location(tensor: onnx.TensorProto) -> str:
    """The data file ``tensor`` names, as onnx reads it (the last ``location``), unchecked."""
    found = ""
    for entry in tensor.external_data:
        if entry.key == "location":
            found = entry.value
    return found


def model_reads(model: Path, what: str = "the input model") -> list[Read]:
    """The model and the external data files it names: what a command reading it must not
    write over (:func:`onnxfix.modelio.targets.check_writes`). A model that cannot be read
    lists itself only: the command reports what is wrong with it, in its own words."""
    from onnxfix.errors import OnnxfixError

    reads = [Read(model, what)]
    try:
        light = load_model(model, need_data=False).model
    except OnnxfixError:
        return reads
    reads += [
        Read(model.parent / location, f"{what}'s external data file")
        for location in data_locations(light)
    ]
    return reads

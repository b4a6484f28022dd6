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
from onnxfix.modelio import reader

__all__ = [
    "ModelFile",
    "all_tensors",
    "data_locations",
    "dereferencing_payloads",
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
        """The tensor's values, read from wherever they are stored."""
        if tensor.name in self.changed:
            return _from_bytes(tensor, payload_bytes(self.path, self.changed[tensor.name]))
        if tensor.name in self.splices and not tensor.raw_data:
            return _from_bytes(tensor, reader.read_payload(self.path, self.splices[tensor.name]))
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            data_path = self.base_dir / info.location
            try:
                with open(data_path, "rb") as f:
                    f.seek(info.offset or 0)
                    data = f.read(info.length) if info.length is not None else f.read()
            except OSError as e:
                raise ModelFileError(
                    f"tensor {tensor.name!r} of {str(self.path)!r} lives in {str(data_path)!r}, "
                    f"which cannot be read ({e.strerror}); keep the data file beside the model"
                ) from e
            return _from_bytes(tensor, data)
        return tensor_to_array(tensor)

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

    With ``need_data`` (the default) every external data file must be present.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    model, splices = reader.read_light_model(path)
    seen: set[str] = set()  # each data file is looked for once, not once per tensor
    for tensor in all_tensors(model) if need_data else ():
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if location in seen:
                continue
            seen.add(location)
            if not (path.parent / location).is_file():
                raise ModelFileError(
                    f"{str(path)!r} keeps tensor {tensor.name!r} in {location!r}, which is not "
                    f"in {str(path.parent)!r}; copy the data file next to the model"
                )
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
        info = external_data_helper.ExternalDataInfo(tensor)
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
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if location not in seen:
                seen.add(location)
                yield location

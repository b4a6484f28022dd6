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

import contextlib
import itertools
import logging
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from onnxfix._proto import cpu_session, from_le_bytes, le_bytes
from onnxfix.dtypes import np_dtype, tensor_to_array
from onnxfix.errors import ModelFileError
from onnxfix.modelio import filecopy, reader, writer
from onnxfix.modelio.staging import Staging

__all__ = [
    "ModelFile",
    "all_tensors",
    "dereferencing_payloads",
    "load_model",
    "save_model",
    "check_model_file",
    "referencing_payloads",
]

logger = logging.getLogger(__name__)

# Tensors at least this big go to the external data file when the model keeps weights there.
EXTERNAL_THRESHOLD = 1024
# Data files are aligned like onnx's own writer, so tensors can be memory-mapped.
_ALIGN = 4096


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
            return _from_bytes(tensor, _bytes(self.path, self.changed[tensor.name]))
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


def _bytes(path: Path, data: bytes | reader.Splice) -> bytes:
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


def _align(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True)
class _DataLayout:
    """The new data file: each source data file copied whole at a base offset, then writes."""

    bases: dict[str, tuple[int, int]]  # source location -> (offset in the new file, its size)
    # (offset, bytes or where they are): changed and newly external tensors
    writes: list[tuple[int, bytes | reader.Splice]]


def _layout_external(mf: ModelFile, model: onnx.ModelProto, data_name: str) -> _DataLayout:
    """Lay out the data file ``data_name`` and point every external tensor of ``model`` into it.

    Nothing is written here (:func:`_write_data_file` does that), so the layout, and the .onnx
    that depends on it, can be checked while the copy made ahead is still running. Each source
    data file is copied whole, so offsets inside it are kept. Changed tensors of the same size
    are overwritten in place, others appended. Tensors that are new or changed and embedded but
    large enough go to the data file too, as onnx's own writer would.
    """
    bases: dict[str, tuple[int, int]] = {}
    writes: list[tuple[int, bytes | reader.Splice]] = []
    end = 0
    for location in _data_locations(model):
        size = (mf.base_dir / location).stat().st_size
        base = _align(end) if end else 0
        bases[location] = (base, size)
        end = base + size
    for tensor in all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            base, size = bases[info.location]
            offset = base + (info.offset or 0)
            length = info.length if info.length is not None else size - (info.offset or 0)
            new = mf.changed.get(tensor.name)
            if new is not None:
                new_length = new.length if isinstance(new, reader.Splice) else len(new)
                if new_length != length:  # it moves to the end
                    offset, length = _align(end) if end else 0, new_length
                    end = offset + length
                writes.append((offset, new))
            _point_external(tensor, data_name, offset, length)
        elif (
            tensor.HasField("raw_data")
            and len(tensor.raw_data) >= EXTERNAL_THRESHOLD
            and (tensor.name not in mf.splices)
        ):
            offset = _align(end) if end else 0
            end = offset + len(tensor.raw_data)
            writes.append((offset, tensor.raw_data))
            _point_external(tensor, data_name, offset, len(tensor.raw_data))
            tensor.ClearField("raw_data")
    return _DataLayout(bases, writes)


def _write_data_file(mf: ModelFile, layout: _DataLayout, staging: Staging, data_name: str) -> None:
    """Write ``data_name`` in ``staging`` as :func:`_layout_external` laid it out.

    The first source data file is usually there already (:meth:`Staging.early_copy`, which
    waits for that copy); the others are copied kernel-side.
    """
    first = next(iter(layout.bases), None)
    copied = first is not None and staging.early_copy(mf.base_dir / first, data_name)
    with open(staging.dir / data_name, "r+b" if copied else "wb") as out:
        for location, (base, size) in layout.bases.items():
            if not (copied and base == 0):  # else the copy made ahead holds it
                source = mf.base_dir / location
                with open(source, "rb") as src:
                    filecopy.copy_range(src.fileno(), out.fileno(), 0, size, base, source)
        for offset, data in layout.writes:
            if isinstance(data, reader.Splice):
                # A splice without a source is in the model's own file (see reader.Splice).
                where = data.source if data.source is not None else mf.path
                with open(where, "rb") as src:
                    filecopy.copy_range(
                        src.fileno(), out.fileno(), data.offset, data.length, offset, where
                    )
            else:
                _pwrite_all(out.fileno(), data, offset)


def referencing_payloads(mf: ModelFile) -> onnx.ModelProto:
    """A copy of ``mf.model`` in which each payload still in ``mf.path`` is an external reference.

    The reference names the file itself (``location`` = its name, with the payload's offset and
    length), so the copy is a valid model with no weight in memory, for any reader that takes
    the file's folder as the base for external data: onnx.checker, shape inference and ONNX
    Runtime given a path there, or given the proto with that folder as the current directory.
    """
    model = onnx.ModelProto()
    model.CopyFrom(mf.model)
    _reference_payloads(model, mf.splices, mf.path.name)
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


def _reference_payloads(
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
        _point_external(tensor, location, splice.offset, splice.length)


def _point_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    # onnx's set_external_data insists on raw_data being present; a light tensor has none.
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def save_model(
    mf: ModelFile,
    out: str | os.PathLike,
    *,
    check: bool = True,
    expect: Mapping[str, np.ndarray] | None = None,
    staging: Staging | None = None,
) -> Path:
    """Write the model to ``out`` atomically and return its path.

    Everything is written into a private temporary folder beside ``out`` under the final names,
    checked there (``onnx.checker``, an onnxruntime load, and the tensors in ``expect`` read back
    bit-identical), then renamed into place. A model that keeps weights in external data gets its
    own data file ``<out>.data`` with a relative location, whatever the source's were called.
    The folder is ``staging`` when given (the caller started copying into it early and removes
    it), else one made and removed here.

    The structural check runs on the plan of the .onnx (:meth:`writer.Plan.light_view`) before
    it is written, so that it overlaps the copy made ahead; the written .onnx is then read
    back once and must equal what was checked, and that one reading serves the onnxruntime
    load and the read-back too.

    When ``out`` is the model's own file (``--in-place``) and the model keeps weights in external
    data, the data files are not rewritten: only the changed tensors' bytes are, where they are
    (:func:`_patch_in_place`), and the .onnx keeps its data locations.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise ModelFileError(f"output folder {str(out.parent)!r} does not exist; create it first")
    if out.resolve() == mf.path.resolve() and _patch_in_place(mf, check, expect):
        return out
    external = mf.uses_external_data
    model = mf.model
    if external:  # _layout_external repoints tensors at the new data file: work on a copy
        model = onnx.ModelProto()
        model.CopyFrom(mf.model)
    data_name = out.name + ".data"
    with contextlib.ExitStack() as cleanup:
        if staging is None:
            staging = cleanup.enter_context(Staging(out))
        staged = staging.dir / out.name
        layout = _layout_external(mf, model, data_name) if external else None
        plan = writer.plan_model(model, mf.splices)
        if check or expect:
            light, splices = plan.light_view(model)
            planned = light.SerializeToString()
        if check:
            # Checked now, while the copy made ahead may still run: the checker reads no
            # payload, it only asks that the files named exist. That the written file is the
            # one checked is proven below, once it is written.
            for name in (out.name, data_name) if external else (out.name,):
                (staging.dir / name).touch()
            _check_structure(staged, light, splices)
        writer.write_plan(plan, mf.path, staged, copied=staging.early_copy(mf.path, out.name))
        if check or expect:
            written = _written_as_planned(staged, planned, splices)
        if layout is not None:
            _write_data_file(mf, layout, staging, data_name)
        if check:
            _check_loads(written, baseline=mf.path)
        if expect:
            _read_back(written, expect)
        if external:
            os.replace(staging.dir / data_name, out.parent / data_name)
        os.replace(staged, out)
    return out


def _patch_in_place(mf: ModelFile, check: bool, expect: Mapping[str, np.ndarray] | None) -> bool:
    """``--in-place`` on an external-data model: write only the changed tensors' bytes.

    Possible when every changed external tensor keeps its size (a kernel of the same shape and
    dtype). The small .onnx is staged beside the model, so its relative data locations resolve
    to the real files (onnx.checker refuses symlinks and hard links to them), and checked; only
    then do the new bytes go into the data files at the tensors' offsets (``os.pwrite``: the
    files keep their inodes, names and every other byte). They are read back through the staged
    .onnx, and the .onnx is renamed over the old one, keeping its data locations and file mode.
    If anything fails after the first byte was written, the old bytes are put back. Returns
    False, having written nothing, when a full rewrite is needed instead.
    """
    tensors = {
        t.name: t for t in all_tensors(mf.model) if external_data_helper.uses_external_data(t)
    }
    if not tensors:
        return False
    patches = []
    for name, data in mf.changed.items():
        data = _bytes(mf.path, data)  # one tensor's bytes: in place they are pwritten
        info = external_data_helper.ExternalDataInfo(tensors[name])
        data_path, offset = mf.base_dir / info.location, info.offset or 0
        try:
            size = data_path.stat().st_size
        except OSError as e:
            raise ModelFileError(
                f"tensor {name!r} of {str(mf.path)!r} lives in {str(data_path)!r}, which cannot "
                f"be read ({e.strerror}); keep the data file beside the model"
            ) from e
        length = info.length if info.length is not None else size - offset
        if length != len(data):
            return False  # the tensor moves: the full rewrite lays the data file out again
        if offset + length > size:
            raise ModelFileError(
                f"{str(data_path)!r} ends at byte {size}, inside tensor {name!r} (bytes {offset} "
                f"to {offset + length}); the data file is truncated, copy it again"
            )
        patches.append((name, data_path, offset, data))
    fd, staged_name = tempfile.mkstemp(
        prefix=f".{mf.path.name}.", suffix=".tmp.onnx", dir=mf.base_dir
    )
    os.close(fd)
    staged = Path(staged_name)
    undo: list[tuple[Path, int, bytes]] = []
    try:
        writer.write_model(mf.model, mf.splices, mf.path, staged)
        os.chmod(staged, stat.S_IMODE(mf.path.stat().st_mode))  # mkstemp made it 0600
        written = check_model_file(staged, baseline=mf.path) if check else None
        # Checked: now, and only now, the data files change, tensor by tensor.
        for name, data_path, offset, data in patches:
            _patch_bytes(name, data_path, offset, data, undo)
        if expect:  # the payloads are read from the data files now, after the patch
            _read_back(written or ModelFile(staged, *reader.read_light_model(staged)), expect)
        os.replace(staged, mf.path)
    except BaseException:
        for data_path, offset, old in reversed(undo):
            with contextlib.suppress(OSError), open(data_path, "r+b") as f:
                _pwrite_all(f.fileno(), old, offset)
        raise
    finally:
        staged.unlink(missing_ok=True)
    return True


def _patch_bytes(
    name: str, data_path: Path, offset: int, data: bytes, undo: list[tuple[Path, int, bytes]]
) -> None:
    """Overwrite ``data_path`` at ``offset`` with ``data``, noting the old bytes in ``undo``."""
    try:
        with open(data_path, "r+b") as f:
            old = os.pread(f.fileno(), len(data), offset)
            undo.append((data_path, offset, old))
            _pwrite_all(f.fileno(), data, offset)
            os.fsync(f.fileno())
    except OSError as e:
        raise ModelFileError(
            f"cannot write tensor {name!r} into {str(data_path)!r} ({e.strerror or e}); the model "
            "was left as it was. Make the data file writable, or write a copy with -o"
        ) from e


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)


def _read_back(written: ModelFile, expect: Mapping[str, np.ndarray]) -> None:
    """The tensors in ``expect`` read from the written file equal it, bit for bit."""
    tensors = {t.name: t for t in all_tensors(written.model) if t.name in expect}
    for name, array in expect.items():
        got = written.read_array(tensors[name])  # says if a data file is missing
        if le_bytes(got) != le_bytes(array):
            raise AssertionError(
                f"tensor {name!r} was not written as intended"
            )  # a bug, not user error


def _written_as_planned(
    path: Path, planned: bytes, splices: Mapping[str, reader.Splice]
) -> ModelFile:
    """``path`` read back (light), after checking it is what :meth:`writer.Plan.light_view` said."""
    written = ModelFile(path, *reader.read_light_model(path))
    if written.splices != splices or written.model.SerializeToString() != planned:
        raise AssertionError(f"{str(path)!r} is not the model that was checked")  # a bug
    return written


# An onnxruntime load reads every weight; past this size only the structural checks run, to keep
# set-kernel at the memory cost of a file copy (README, "Performance").
SESSION_CHECK_LIMIT = 256 << 20


def check_model_file(path: Path, *, baseline: Path | None = None) -> ModelFile:
    """onnx.checker (with shape inference) on ``path``, then a load in an InferenceSession;
    returns ``path`` read (light), for more checks without reading its structure again.

    The checker sees a light copy in which each embedded payload is an external reference into
    ``path`` itself, so no weight is read into memory whatever the model's size. When the
    result does not load in onnxruntime but ``baseline`` (the input) does not either, e.g. a
    float64 Conv that the CPU provider lacks, the result is no worse than the input: that
    is logged and accepted.
    """
    written = ModelFile(path, *reader.read_light_model(path))
    light = onnx.ModelProto()
    light.CopyFrom(written.model)
    _check_structure(path, light, written.splices)
    _check_loads(written, baseline=baseline)
    return written


def _check_structure(
    path: Path, light: onnx.ModelProto, splices: Mapping[str, reader.Splice]
) -> None:
    """onnx.checker with shape inference on ``path``'s light model; ``light`` is used up.

    The payloads in ``splices`` are made external references into ``path`` and the result is
    written beside it, so that the checker resolves them, and the data files, from there. The
    checker reads no payload: it asks only that each file named is a regular file.
    """
    _reference_payloads(light, splices, path.name)
    probe = path.parent / (path.name + ".check.onnx")
    try:
        with open(probe, "wb") as f:
            f.write(light.SerializeToString())
        onnx.checker.check_model(str(probe), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelFileError(f"the result fails onnx.checker, so it was not written: {e}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


def _check_loads(written: ModelFile, *, baseline: Path | None) -> None:
    """A load in onnxruntime of the written model (all of it in place), when small enough."""
    path, size = written.path, 0
    # Summed until past the limit, which the .onnx or the first data file often is at once.
    files = itertools.chain([path], (path.parent / loc for loc in _data_locations(written.model)))
    for part in files:
        size += part.stat().st_size
        if size > SESSION_CHECK_LIMIT:
            logger.info("%s: over %d bytes, skipping the onnxruntime load check", path, size)
            return
    problem = _session_problem(path)
    if problem is None:
        return
    if baseline is not None and _session_problem(baseline) is not None:
        logger.warning(
            "onnxruntime cannot load the input model either (%s); result not load-checked", problem
        )
        return
    raise ModelFileError(
        f"the result does not load in onnxruntime, so it was not written: {problem}"
    )


def _data_locations(model: onnx.ModelProto) -> Iterator[str]:
    """Each external data file ``model`` names, once, found lazily."""
    seen: set[str] = set()
    for tensor in all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if location not in seen:
                seen.add(location)
                yield location


def _session_problem(path: Path) -> str | None:
    """Why onnxruntime cannot load ``path``, or None when it can."""
    try:
        cpu_session(path)
    except Exception as e:  # onnxruntime raises its own (non-exported) exception types
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None

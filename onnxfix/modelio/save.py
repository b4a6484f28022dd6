"""Save a :class:`~onnxfix.modelio.modelfile.ModelFile` atomically: :func:`save_model`.

Everything is written into a private folder beside the output (:mod:`onnxfix.modelio.staging`)
under the final names, checked there (:mod:`onnxfix.modelio.checks`), then renamed into place.
Every unchanged payload is copied kernel-side from where it lies (:mod:`onnxfix.modelio.writer`,
:mod:`onnxfix.modelio.filecopy`); a model that keeps weights in external data gets one data
file of its own. ``--in-place`` on such a model goes to :mod:`onnxfix.modelio.inplace`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxfix.modelio import filecopy, journal, reader, writer
from onnxfix.modelio.checks import check_loads, check_structure, read_back, written_as_planned
from onnxfix.modelio.external import is_external
from onnxfix.modelio.inplace import patch_in_place
from onnxfix.modelio.modelfile import (
    EXTERNAL_THRESHOLD,
    ModelFile,
    all_tensors,
    point_external,
)
from onnxfix.modelio.staging import Staging
from onnxfix.modelio.targets import folder_lock, fsync_folder
from onnxfix.outputs import check_output, writing

__all__ = ["save_model"]

# Data files are aligned like onnx's own writer, so tensors can be memory-mapped.
_ALIGN = 4096


def _align(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True)
class _DataLayout:
    """The new data file: each source data file copied whole at a base offset, then writes."""

    bases: dict[str, tuple[int, int]]  # source location -> (offset in the new file, its size)
    # (offset, bytes or where they are): changed and newly external tensors
    writes: list[tuple[int, bytes | reader.Splice]]
    sources: dict[str, Path]  # source location -> its real path, checked: what is opened


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
    files = mf.data_files(model)  # checked: regular files in the model's folder (external.py)
    for location, file in files.items():
        base = _align(end) if end else 0
        bases[location] = (base, file.size)
        end = base + file.size
    for tensor in all_tensors(model):
        if is_external(tensor):
            info = mf.external(tensor, sized=False, files=files)  # new bytes may differ in size
            base, _ = bases[info.location]
            offset, length = base + info.offset, info.length
            new = mf.changed.get(tensor.name)
            if new is not None:
                new_length = new.length if isinstance(new, reader.Splice) else len(new)
                if new_length != length:  # it moves to the end
                    offset, length = _align(end) if end else 0, new_length
                    end = offset + length
                writes.append((offset, new))
            point_external(tensor, data_name, offset, length)
        elif (
            tensor.HasField("raw_data")
            and len(tensor.raw_data) >= EXTERNAL_THRESHOLD
            and (tensor.name not in mf.splices)
        ):
            offset = _align(end) if end else 0
            end = offset + len(tensor.raw_data)
            writes.append((offset, tensor.raw_data))
            point_external(tensor, data_name, offset, len(tensor.raw_data))
            tensor.ClearField("raw_data")
    return _DataLayout(bases, writes, {loc: file.path for loc, file in files.items()})


def _write_data_file(mf: ModelFile, layout: _DataLayout, staging: Staging, data_name: str) -> None:
    """Write ``data_name`` in ``staging`` as :func:`_layout_external` laid it out.

    The first source data file is usually there already (:meth:`Staging.early_copy`, which
    waits for that copy); the others are copied kernel-side.
    """
    first = next(iter(layout.bases), None)
    copied = first is not None and staging.early_copy(layout.sources[first], data_name)
    with open(staging.dir / data_name, "r+b" if copied else "wb") as out:
        for location, (base, size) in layout.bases.items():
            if not (copied and base == 0):  # else the copy made ahead holds it
                source = layout.sources[location]
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
                filecopy.write_at(out.fileno(), data, offset)


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
    check_output(out)
    if out.resolve() == mf.path.resolve() and patch_in_place(mf, check, expect):
        return out  # its failures say what it put back
    # A full disk, a file-size limit, a read-only folder: one error naming the output.
    with writing(f"output {str(out)!r}"):
        return _save_model(mf, out, check, expect, staging)


def _save_model(
    mf: ModelFile,
    out: Path,
    check: bool,
    expect: Mapping[str, np.ndarray] | None,
    staging: Staging | None,
) -> Path:
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
            check_structure(staged, light, splices)
        writer.write_plan(plan, mf.path, staged, copied=staging.early_copy(mf.path, out.name))
        if check or expect:
            written = written_as_planned(staged, planned, splices)
        if layout is not None:
            _write_data_file(mf, layout, staging, data_name)
        if check:
            check_loads(written, baseline=mf.path)
        if expect:
            read_back(written, expect)
        _commit(staged, out, staging.dir / data_name if external else None)
    return out


def _commit(staged: Path, out: Path, data: Path | None) -> None:
    """Rename the staged .onnx, and its data file ``data`` first, into place.

    Under the folder's lock, so that two runs writing one output cannot pair one's .onnx with
    the other's data. Two renames are not one step for a kill, though: when an old .onnx is
    there to be left with the new data, a journal keeps the old data file (a hard link) until
    the new .onnx is in (:mod:`onnxfix.modelio.journal`; the next load of ``out`` recovers).
    """
    with folder_lock(out.parent):
        record = None
        try:
            if data is not None:
                if os.path.lexists(out):
                    record = journal.begin_replace(out, staged, data.name)
                os.replace(data, out.parent / data.name)
            os.replace(staged, out)
            fsync_folder(out.parent)
        except BaseException:
            if record is not None:
                journal.recover(out, lambda: ())  # the old data file back, at once
            raise
        if record is not None:
            record.finish()

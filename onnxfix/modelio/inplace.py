"""``--in-place`` on a model that keeps its weights in external data: only the changed
tensors' bytes are written, where they are, with an undo record (:func:`patch_in_place`).

The undo record is kept twice: in memory, for an error the run sees (the old bytes are put back
at once), and on disk, for a kill it does not see (:mod:`onnxfix.modelio.journal`, fsynced
before the first data byte changes and removed after the rename that commits the change; the
next command that loads the model finishes or rolls back what it finds)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from onnx import external_data_helper

from onnxfix.errors import ModelFileError
from onnxfix.modelio import external, filecopy, journal, reader, writer
from onnxfix.modelio.checks import check_model_file, read_back
from onnxfix.modelio.modelfile import ModelFile, all_tensors, payload_bytes
from onnxfix.modelio.staging import private_file
from onnxfix.modelio.targets import folder_lock, fsync_folder

__all__ = ["patch_in_place"]


def patch_in_place(mf: ModelFile, check: bool, expect: Mapping[str, np.ndarray] | None) -> bool:
    """``--in-place`` on an external-data model: write only the changed tensors' bytes.

    Possible when every changed external tensor keeps its size (a kernel of the same shape and
    dtype). The small .onnx is staged beside the model, so its relative data locations resolve
    to the real files (onnx.checker refuses symlinks and hard links to them), and checked; only
    then do the new bytes go into the data files at the tensors' offsets (``os.pwrite``: the
    files keep their inodes, names and every other byte). They are read back through the staged
    .onnx, and the .onnx is renamed over the old one, keeping its data locations and file mode.
    If anything fails after the first byte was written, the old bytes are put back; if the run
    is killed, the journal written before that byte lets the next command put them back.
    Returns False, having written nothing, when a full rewrite is needed instead.
    """
    tensors = {
        t.name: t for t in all_tensors(mf.model) if external_data_helper.uses_external_data(t)
    }
    if not tensors:
        return False
    patches = []
    for name, data in mf.changed.items():
        data = payload_bytes(mf.path, data)  # one tensor's bytes: in place they are pwritten
        # Checked (onnxfix.modelio.external): a regular file in the model's folder, holding the
        # tensor's range, with no other name a write would change too. Its real path is opened.
        info = external.for_writing(mf.path, tensors[name])
        if info.length != len(data):
            return False  # the tensor moves: the full rewrite lays the data file out again
        patches.append((name, info.location, info.file.path, info.offset, data))
    staged = private_file(mf.path)
    undo: list[tuple[Path, int, bytes]] = []
    try:
        writer.write_model(mf.model, mf.splices, mf.path, staged)
        os.chmod(staged, stat.S_IMODE(mf.path.stat().st_mode))  # mkstemp made it 0600
        written = check_model_file(staged, baseline=mf.path) if check else None
        # Checked: now, and only now, the data files change, tensor by tensor, under the
        # folder's lock (no other onnxfix writer, and no recovery, sees the journal meanwhile).
        with folder_lock(mf.base_dir):
            record = journal.begin_patch(
                mf.path,
                staged,
                [
                    journal.Patch(name, location, offset, _read_old(name, path, offset, data), data)
                    for name, location, path, offset, data in patches
                ],
            )
            try:
                for name, _, data_path, offset, data in patches:
                    _patch_bytes(name, data_path, offset, data, undo)
                if expect:  # the payloads are read from the data files now, after the patch
                    read_back(
                        written or ModelFile(staged, *reader.read_light_model(staged)), expect
                    )
                os.replace(staged, mf.path)
                fsync_folder(mf.base_dir)
            except BaseException:
                if _undo(undo):
                    record.finish()  # undone here; else the journal stays for the next run
                raise
            record.finish()
    finally:
        staged.unlink(missing_ok=True)
    return True


def _read_old(name: str, data_path: Path, offset: int, data: bytes) -> bytes:
    try:
        with open(data_path, "rb") as f:
            return os.pread(f.fileno(), len(data), offset)
    except OSError as e:
        raise ModelFileError(
            f"cannot read tensor {name!r} in {str(data_path)!r} ({e.strerror or e}); the model "
            "was left as it was"
        ) from e


def _undo(undo: list[tuple[Path, int, bytes]]) -> bool:
    """Put the old bytes back; whether every write of them succeeded."""
    ok = True
    for data_path, offset, old in reversed(undo):
        try:
            with open(data_path, "r+b") as f:
                filecopy.write_at(f.fileno(), old, offset)
                os.fsync(f.fileno())
        except OSError:
            ok = False
    return ok


def _patch_bytes(
    name: str, data_path: Path, offset: int, data: bytes, undo: list[tuple[Path, int, bytes]]
) -> None:
    """Overwrite ``data_path`` at ``offset`` with ``data``, noting the old bytes in ``undo``."""
    try:
        with open(data_path, "r+b") as f:
            old = os.pread(f.fileno(), len(data), offset)
            undo.append((data_path, offset, old))
            filecopy.write_at(f.fileno(), data, offset)
            os.fsync(f.fileno())
    except OSError as e:
        raise ModelFileError(
            f"cannot write tensor {name!r} into {str(data_path)!r} ({e.strerror or e}); the model "
            "was left as it was. Make the data file writable, or write a copy with -o"
        ) from e

"""``--in-place`` on a model that keeps its weights in external data: only the changed
tensors' bytes are written, where they are, with an undo record (:func:`patch_in_place`)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from onnx import external_data_helper

from onnxfix.errors import ModelFileError
from onnxfix.modelio import filecopy, reader, writer
from onnxfix.modelio.checks import check_model_file, read_back
from onnxfix.modelio.modelfile import ModelFile, all_tensors, payload_bytes

__all__ = ["patch_in_place"]


def patch_in_place(mf: ModelFile, check: bool, expect: Mapping[str, np.ndarray] | None) -> bool:
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
        data = payload_bytes(mf.path, data)  # one tensor's bytes: in place they are pwritten
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
            read_back(written or ModelFile(staged, *reader.read_light_model(staged)), expect)
        os.replace(staged, mf.path)
    except BaseException:
        for data_path, offset, old in reversed(undo):
            with contextlib.suppress(OSError), open(data_path, "r+b") as f:
                filecopy.write_at(f.fileno(), old, offset)
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
            filecopy.write_at(f.fileno(), data, offset)
            os.fsync(f.fileno())
    except OSError as e:
        raise ModelFileError(
            f"cannot write tensor {name!r} into {str(data_path)!r} ({e.strerror or e}); the model "
            "was left as it was. Make the data file writable, or write a copy with -o"
        ) from e

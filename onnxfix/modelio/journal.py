"""The journal that makes a change to a model's files crash-safe, and its recovery.

Two writes change files a model already has, so a kill between their steps would leave an
``.onnx`` that does not match its data:

- ``--in-place`` on an external-data model (:mod:`onnxfix.modelio.inplace`) writes the new
  kernel bytes into the data files, then renames the staged ``.onnx`` over the model;
- a save whose output already exists with external data (:mod:`onnxfix.modelio.save`) renames
  the new ``<output>.data`` over the old one, then the new ``.onnx`` over the old one.

Before the first of those steps, :func:`begin_patch` / :func:`begin_replace` write a journal
beside the model, ``.<model>.onnxfix-journal`` (fsynced, then renamed into place): the old and
new bytes of every patched range and their hashes, or a hard link to the old data file; and the identity
(inode, size) of the staged ``.onnx`` that is the commit point. :meth:`Journal.finish` removes
it once the ``.onnx`` is renamed. The journal is written and removed under the folder's lock
(:func:`onnxfix.modelio.targets.folder_lock`).

Any command that loads the model calls :func:`recover` first (:func:`onnxfix.modelio.modelfile.load_model`).
A journal found there means a run was killed midway: if the ``.onnx`` in place is the staged
one, the change was complete and the journal is dropped; otherwise the old bytes (or the old
data file) are put back, and a warning says so. A journal is input from disk like any other: it
may only restore the data files the model itself names, each range only when every byte of it
now is the recorded old or new byte at that place (a write the kill tore in two included), and
the recorded bytes must match their hashes. So a forged journal cannot write into a file whose
bytes its author does not know. Anything else is refused with the reason and what to do.

Light: the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from onnxfix.errors import ModelFileError
from onnxfix.modelio.external import check_location
from onnxfix.modelio.staging import clean_stale
from onnxfix.modelio.targets import folder_lock, fsync_folder
from onnxfix.outputs import temp_prefix

__all__ = ["Journal", "Patch", "begin_patch", "begin_replace", "journal_path", "recover"]

logger = logging.getLogger(__name__)

_MAGIC = b"onnxfix-journal 1\n"


def journal_path(model: Path) -> Path:
    """Where the journal of ``model`` is: beside it, hidden."""
    return model.parent / f"{temp_prefix(model)}onnxfix-journal"


def _backup_path(model: Path) -> Path:
    return journal_path(model).with_name(journal_path(model).name + ".backup")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Patch:
    """New bytes for ``length`` bytes at ``offset`` of the data file ``location``."""

    tensor: str
    location: str  # as the model names it, relative to its folder
    offset: int
    old: bytes
    new: bytes


@dataclass
class Journal:
    """An open journal; :meth:`finish` removes it once the change is committed or undone."""

    model: Path
    path: Path

    def finish(self) -> None:
        _backup_path(self.model).unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        fsync_folder(self.model.parent)


def begin_patch(model: Path, staged: Path, patches: Sequence[Patch]) -> Journal:
    """Record the old bytes of ``patches`` before any is written; ``staged`` is the new .onnx."""
    header = {
        "patches": [
            {
                "tensor": p.tensor,
                "location": p.location,
                "offset": p.offset,
                "length": len(p.old),
                "old_sha256": _sha(p.old),
                "new_sha256": _sha(p.new),
            }
            for p in patches
        ]
    }
    return _write(model, staged, header, [p.old for p in patches] + [p.new for p in patches])


def begin_replace(model: Path, staged: Path, data_name: str) -> Journal:
    """Keep the old ``data_name`` beside ``model`` (a hard link) before it is replaced."""
    data = model.parent / data_name
    backup = _backup_path(model)
    backup.unlink(missing_ok=True)
    kept = True
    try:
        os.link(data, backup)
    except FileNotFoundError:
        kept = False  # no old data file: the old .onnx does not use one by that name
    except OSError:
        os.rename(data, backup)  # no hard links here: moved aside instead, put back on undo
    return _write(model, staged, {"replace": {"data": data_name, "backup": kept}}, [])


def _write(model: Path, staged: Path, header: dict, blobs: Iterable[bytes]) -> Journal:
    path = journal_path(model)
    st = os.stat(staged)
    header = {
        "model": model.name,
        "new_ino": st.st_ino,
        "new_size": st.st_size,
        "staged": staged.name if staged.parent == model.parent else None,
        **header,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + json.dumps(header).encode() + b"\n")
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_folder(model.parent)
    return Journal(model, path)


def recover(model: Path, locations: Callable[[], Iterable[str]]) -> None:
    """Finish or roll back a change to ``model`` that a killed run left (see the module).

    ``locations``: the data files the model names (asked only when there is a journal).
    """
    path = journal_path(model)
    tmp = path.with_name(path.name + ".tmp")
    if not (os.path.lexists(path) or os.path.lexists(tmp)):
        return
    with folder_lock(model.parent):
        tmp.unlink(missing_ok=True)  # never completed: nothing was changed after it
        if not os.path.lexists(path):
            return  # the run that wrote it finished while we waited for the lock
        header, blobs = _read(model, path)
        if header.get("model") != model.name:
            return  # another model's, whose name starts alike (temp_prefix cuts long names)
        st = os.stat(model)
        clean_stale(model)  # the killed run's staging, beside the model
        if (st.st_ino, st.st_size) == (header["new_ino"], header["new_size"]):
            Journal(model, path).finish()
            logger.info("%s: the change an onnxfix run was killed after was complete", model)
            return
        restored = _roll_back(model, path, header, blobs, set(locations()))
        Journal(model, path).finish()
    logger.warning(
        "%s: an onnxfix run changing it was killed before it finished; %s, so the model is as it "
        "was before that run",
        model,
        restored,
    )


def _unrecoverable(model: Path, path: Path, why: str) -> ModelFileError:
    return ModelFileError(
        f"{str(model)!r} was being changed by an onnxfix run that was killed, and it cannot be "
        f"rolled back: {why}. Restore the model and its data from a copy, then delete "
        f"{str(path)!r}"
    )


def _read(model: Path, path: Path) -> tuple[dict, bytes]:
    try:
        raw = path.read_bytes()
        if not raw.startswith(_MAGIC):
            raise ValueError("it does not start as an onnxfix journal")
        line, _, blobs = raw[len(_MAGIC) :].partition(b"\n")
        header = json.loads(line)
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        int(header["new_ino"]), int(header["new_size"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _unrecoverable(model, path, f"its journal {str(path)!r} cannot be read ({e})") from e
    return header, blobs


def _plain_name(location: object) -> bool:
    if not isinstance(location, str) or not location or "\\" in location:
        return False
    parts = PurePosixPath(location).parts
    return not PurePosixPath(location).is_absolute() and ".." not in parts


def _data_file_ok(model: Path, location: str) -> bool:
    """A regular file inside the model's folder and not the model: the rules for every data
    file (:mod:`onnxfix.modelio.external`), checked by stat, so a FIFO is never opened."""
    try:
        check_location(model, location)
    except ModelFileError:
        return False
    return True


def _between(now: bytes, old: bytes, new: bytes) -> bool:
    """Whether each byte of ``now`` is the old or the new byte at its place: the new bytes, or
    a write of them that a kill cut short (whole pages at a time, or any part of one)."""
    if len(now) != len(old):
        return False
    page = 4096
    for at in range(0, len(now), page):
        piece, was, will = now[at : at + page], old[at : at + page], new[at : at + page]
        if piece in (was, will):
            continue
        if any(b not in (o, n) for b, o, n in zip(piece, was, will)):
            return False
    return True


_STAGED = re.compile(r"onnxfix-\d+-\d+\.[A-Za-z0-9_]+\.tmp\.onnx")


def _roll_back(model: Path, path: Path, header: dict, blobs: bytes, named: set[str]) -> str:
    """Put the old bytes (or data file) back; what was done, in words."""
    if "replace" in header:
        entry = header["replace"]
        data = model.parent / f"{model.name}.data"
        if not isinstance(entry, dict) or entry.get("data") != data.name:
            raise _unrecoverable(
                model, path, f"its journal names a data file other than {data.name!r}"
            )
        backup = _backup_path(model)
        if entry.get("backup") and os.path.lexists(backup):
            os.replace(backup, data)
            fsync_folder(model.parent)
            return f"its old data file {str(data)!r} was put back"
        return "its new data file was not used by the old model"
    patches = header.get("patches")
    if not isinstance(patches, list):
        raise _unrecoverable(model, path, "its journal lists no change")
    at = 0
    news = sum(int(p.get("length", 0)) for p in patches if isinstance(p, dict))
    done: list[str] = []
    for p in patches:
        try:
            location, offset, length = p["location"], int(p["offset"]), int(p["length"])
            tensor, old_sha, new_sha = str(p["tensor"]), str(p["old_sha256"]), str(p["new_sha256"])
        except (KeyError, TypeError, ValueError) as e:
            raise _unrecoverable(model, path, f"its journal is malformed ({e})") from e
        data = model.parent / str(location)
        inside = _data_file_ok(model, str(location))
        if not (_plain_name(location) and location in named and inside) or offset < 0 or length < 0:
            raise _unrecoverable(
                model,
                path,
                f"its journal names {location!r}, which is not a data file of the model",
            )
        old, new = blobs[at : at + length], blobs[news + at : news + at + length]
        at += length
        if (len(old), len(new)) != (length, length) or (_sha(old), _sha(new)) != (old_sha, new_sha):
            raise _unrecoverable(model, path, "the bytes in its journal do not match their hashes")
        try:
            with open(data, "r+b") as f:
                now = os.pread(f.fileno(), length, offset)
                if now != old:
                    if not _between(now, old, new):
                        raise _unrecoverable(
                            model,
                            path,
                            f"bytes {offset} to {offset + length} of {str(data)!r} (tensor "
                            f"{tensor!r}) are neither its old nor its new values",
                        )
                    os.pwrite(f.fileno(), old, offset)
                    os.fsync(f.fileno())
                    done.append(tensor)
        except OSError as e:
            raise _unrecoverable(
                model, path, f"{str(data)!r} cannot be written ({e.strerror or e})"
            ) from e
    staged, prefix = header.get("staged"), temp_prefix(model)
    if (
        isinstance(staged, str)
        and staged.startswith(prefix)
        and _STAGED.fullmatch(staged[len(prefix) :])
    ):
        with contextlib.suppress(OSError):
            (model.parent / staged).unlink()
    if not done:
        return "no byte had been changed yet"
    return f"the old values of {', '.join(repr(t) for t in done)} were put back"

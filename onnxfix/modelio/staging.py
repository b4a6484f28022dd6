"""The private folder an output is written in before it is renamed into place, and the copy
into it, made ahead, of the bytes a rewrite keeps.

Fixing one kernel of a 1 GB model is mostly copying bytes that do not change, and otherwise
starting Python, importing numpy and onnx and checking the result: each about as long as a
``cp``. The copy is done by the kernel (``os.copy_file_range`` releases the GIL), so it can run
on another core while Python works. :class:`Staging` starts it in a thread as soon as the paths
are known, before anything heavy is imported, and the save (:mod:`onnxfix.modelio.modelfile`) uses what
is already in place.

What is copied ahead is a guess made from the file alone: the ``.onnx`` itself (with embedded
weights, a kernel of the same shape leaves every payload at its offset), and the data file of
the first initializer kept in external data (a rewrite copies each data file whole). A wrong
guess costs time, never a wrong byte: the save asks :meth:`Staging.early_copy` whether a file
holds a whole copy of a source that has not changed since, and writes over or copies anything
that is not in place.

Every temporary folder or file onnxfix makes beside an output is named for its owner,
``.<output>.onnxfix-<pid>-<start>.<random>.tmp`` (:func:`private_dir`, :func:`private_file`):
the process id and its start time, so that a reused pid is not taken for the owner. A run that
is killed (SIGKILL, the OOM killer, a CI timeout) cannot remove its folder, which may hold
hundreds of MB; the next run that writes beside the same output removes those whose owner is
gone (:func:`clean_stale`), and reports, without touching them, those an older onnxfix left
(``.<output>.<random>.tmp``: no owner to check). The owner is in the name rather than in a file
inside, so it is there from the moment the folder is, and the folder holds only the output.

This module imports only the standard library, :mod:`onnxfix.modelio.reader`, :mod:`onnxfix.modelio.filecopy`
and :mod:`onnxfix.outputs`, so the copy starts before onnx and numpy are imported.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from onnxfix.modelio import filecopy, reader
from onnxfix.outputs import check_output, temp_prefix, writing

__all__ = ["Staging", "clean_stale", "private_dir", "private_file"]

logger = logging.getLogger(__name__)

# Copied ahead in pieces this big, so that closing the staging stops the copy within one piece
# (about 0.1 s here). Not smaller: each piece costs the copy thread a wait for the GIL and a new
# kernel copy. A 1 GB copy started beside `import numpy, onnx` ended 0.53-0.63 s after the
# process started in 64 MiB pieces, 0.47-0.52 s in 256 MiB ones; cp alone took 0.47 s.
_PIECE = 256 << 20


def _identity(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# After the output's prefix, the owner tag of a temporary name (see the module docstring).
_OWNED = re.compile(r"onnxfix-(\d+)-(\d+)\.[A-Za-z0-9_]+\.tmp(\.onnx)?")
# What onnxfix left before owner tags: ``.<output>.<8 random characters>.tmp``.
_LEGACY = re.compile(r"[A-Za-z0-9_]{8}\.tmp")


def _start_time(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot): 0 where that cannot be read, -1
    for a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return -1 if fields[0] == b"Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def _owner_tag() -> str:
    pid = os.getpid()
    return f"onnxfix-{pid}-{max(_start_time(pid), 0)}"


def _alive(pid: int, start: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists (another user's)
    now = _start_time(pid)
    return now != -1 and (start == 0 or now in (0, start))


def private_dir(out: Path) -> Path:
    """A new folder beside ``out`` named for this process, once those of dead runs are gone."""
    clean_stale(out)
    prefix = f"{temp_prefix(out)}{_owner_tag()}."
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=out.parent))


def private_file(out: Path) -> Path:
    """A new empty file beside ``out`` named for this process (``.tmp.onnx``: a staged model)."""
    clean_stale(out)
    prefix = f"{temp_prefix(out)}{_owner_tag()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp.onnx", dir=out.parent)
    os.close(fd)
    return Path(name)


def clean_stale(out: Path) -> list[Path]:
    """Remove the temporary folders and files beside ``out`` whose owner is gone; return them.

    Those an older onnxfix left (no owner in the name) are reported on stderr, not removed: a
    run of that version may still be writing them.
    """
    prefix = temp_prefix(out)
    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(out.parent) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        path = out.parent / name
        owned = _OWNED.fullmatch(name[len(prefix) :])
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if owned is None:
            if _LEGACY.fullmatch(name[len(prefix) :]) and stat.S_ISDIR(mode):
                logger.warning(
                    "%s looks like the temporary folder of a killed run of an older onnxfix; "
                    "remove it if no onnxfix is running",
                    path,
                )
            continue
        if _alive(int(owned.group(1)), int(owned.group(2))):
            continue
        if stat.S_ISDIR(mode):
            shutil.rmtree(path, ignore_errors=True)
        elif stat.S_ISREG(mode):
            path.unlink(missing_ok=True)
        else:
            continue  # a symlink or a special file is none of onnxfix's: left alone
        logger.info("removed %s, left by an onnxfix run that was killed", path)
        removed.append(path)
    return removed


class Staging:
    """A private temporary folder beside ``out``, removed by :meth:`close`.

    With ``copy_from`` (the input model), a thread starts copying its ``.onnx`` to
    ``out.name`` in the folder and, when ``data`` is set, the data file of its first external
    initializer to ``out.name + ".data"``: the names :func:`onnxfix.modelio.save.save_model` writes.
    """

    def __init__(self, out: Path, *, copy_from: Path | None = None, data: bool = True) -> None:
        check_output(out)
        with writing(f"output {str(out)!r}"):
            self.dir = private_dir(out)
        self._out = out
        self._stop = threading.Event()
        self._copies: dict[str, tuple[Path, tuple[int, ...]]] = {}  # name -> source, identity
        # Set when the copy ahead of that name is over (done, failed or not attempted), so the
        # small .onnx can be used while the large data file is still being copied.
        self._over = {name: threading.Event() for name in (out.name, out.name + ".data")}
        self._thread = None
        if copy_from is not None:
            self._thread = threading.Thread(
                target=self._copy_ahead, args=(copy_from, data), name="onnxfix-copy", daemon=True
            )
            self._thread.start()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def early_copy(self, source: Path, name: str) -> bool:
        """Whether ``name`` in the folder holds a whole copy of ``source`` as it is now.

        Waits for the copy ahead of ``name`` to finish. False means the file, if any, must be
        rewritten.
        """
        if self._thread is not None:
            over = self._over.get(name)
            if over is not None:
                over.wait()
            else:
                self._thread.join()
        done = self._copies.get(name)
        if done is None:
            return False
        copied_from, identity = done
        try:
            same = copied_from.resolve() == source.resolve() and _identity(source) == identity
        except OSError:
            return False
        if not same:
            logger.debug("%s changed or is not what was copied ahead; copying again", source)
        return same

    def close(self) -> None:
        """Stop the copy ahead and remove the folder with whatever is still in it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _copy_ahead(self, model: Path, data: bool) -> None:
        try:
            jobs = [(model, self._out.name)]
            location = reader.first_external_location(model) if data else None
            if location is not None:
                jobs.append((model.parent / location, self._out.name + ".data"))
            for source, name in jobs:
                try:
                    self._copy(source, self.dir / name)
                except Exception as e:  # only a head start: the save copies what is missing
                    logger.debug("copying %s ahead failed (%s)", source, e)
                self._over[name].set()
                if self._stop.is_set():
                    return
        finally:
            for over in self._over.values():
                over.set()

    def _copy(self, source: Path, dest: Path) -> None:
        if not source.is_file():  # missing, or a FIFO whose open would block: the save says
            return
        with open(source, "rb") as src, open(dest, "wb") as dst:
            before = os.fstat(src.fileno())
            for start in range(0, before.st_size, _PIECE):
                if self._stop.is_set():
                    return
                count = min(_PIECE, before.st_size - start)
                filecopy.copy_range(src.fileno(), dst.fileno(), start, count, start, source)
        identity = _identity(source)
        if identity == (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns):
            self._copies[dest.name] = (source, identity)

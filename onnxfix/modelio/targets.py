"""What a command may write: never a file it reads, only regular files, one writer at a time.

Every command that writes checks its write targets here before it writes anything
(:func:`check_writes`): it lists the files it reads (the model, each external data file it
names, kernel, bias, data and checkpoint files, the artifacts it exports from) and the paths it
will write (the output, ``<output>.data``, an artifacts folder as a whole). A write target is
refused when

- it exists and is not a regular file (a device such as ``/dev/null``, a FIFO, a folder, a
  socket): renaming over it would replace the node itself, and root may do that. The output
  the user named is checked by :func:`onnxfix.outputs.check_output` (which also catches a
  missing folder or a name too long); a path derived from it, ``<output>.data``, here;
- it is the same file as an input, however spelled: the comparison is by ``st_dev``/``st_ino``
  after following symbolic links, so a relative path, ``./``, a symlink or a hard link to the
  input are all caught;
- for a folder replaced as a whole (make-artifacts), when an input lies inside it, by path
  (after resolving links, so ``-o`` the model's parent or grandparent is caught) or by inode
  (a hard link or symlink to an input among its entries).

:func:`folder_lock` serialises onnxfix's writers in one folder: the final renames of an output
and its data file, an in-place patch and its journal, the swap of an artifacts folder. Without
it two runs writing one output could pair one's ``.onnx`` with the other's data. It is an
``flock`` on the folder itself, so no lock file is ever left beside the outputs, and the kernel
releases it when its holder dies, however it dies.

:func:`exchange` swaps two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so
replacing an artifacts folder never leaves it only under a hidden name.

Light: the standard library only (set-kernel checks its output before importing numpy or onnx).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from onnxfix.errors import ModelFileError
from onnxfix.outputs import check_output

try:
    import fcntl
except ImportError:  # Windows: no flock; writers there are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = ["Read", "Write", "check_writes", "folder_lock", "exchange", "fsync_folder"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Read:
    """A file a command reads; ``what`` names it in a message ("the input model")."""

    path: Path
    what: str


@dataclass(frozen=True)
class Write:
    """A path a command writes.

    ``flag`` is how the message names the parameter that chose it (an
    :func:`onnxfix.errors.param` reference). ``role`` is set for a path derived from it (say
    ``"its data file"`` for ``<output>.data``), ``given`` then being the path the user gave.
    ``folder``: the path is a folder replaced as a whole, everything in it lost.
    """

    path: Path
    flag: str
    role: str | None = None
    given: Path | None = None
    folder: bool = False

    def name(self) -> str:
        """The write target as the message names it."""
        if self.role is None:
            return f"{self.flag} {str(self.path)!r}"
        return f"{self.flag} {str(self.given)!r} would write {self.role} {str(self.path)!r}, which"


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to an input is that input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def check_writes(reads: Iterable[Read], writes: Iterable[Write]) -> None:
    """Refuse, before anything is written, any write that could lose data (see the module).

    Raises :class:`~onnxfix.errors.ModelFileError` naming the write target, its flag and the
    input it would destroy.
    """
    reads = list(reads)
    inputs: dict[tuple[int, int], Read] = {}
    for r in reads:
        ident = _identity(r.path)
        if ident is not None:
            inputs.setdefault(ident, r)
    for w in writes:
        if w.folder:
            _check_folder(w, reads, inputs)
            continue
        if w.role is None:
            check_output(w.path)
        else:
            # Not followed: a rename replaces a symlink itself, never what it points to.
            with contextlib.suppress(OSError):
                mode = os.lstat(w.path).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    raise ModelFileError(
                        f"{w.name()} is {_kind(mode)}, not a regular file; move it away or "
                        f"choose another {w.flag}"
                    )
        st = None
        with contextlib.suppress(OSError):
            st = os.stat(w.path)  # followed: a link to an input is that input
        found = inputs.get((st.st_dev, st.st_ino)) if st is not None else None
        if found is not None:
            raise ModelFileError(
                f"{w.name()} is the same file as {found.what} {str(found.path)!r}; onnxfix never "
                f"overwrites a file it reads: choose another {w.flag}"
            )


def _check_folder(w: Write, reads: list[Read], inputs: dict[tuple[int, int], Read]) -> None:
    """A folder replaced whole: no input inside it, by path or by inode among its entries."""
    for r in reads:
        if _inside(r.path, w.path):
            raise ModelFileError(_in_folder(w, r, None))
    try:
        entries = list(os.scandir(w.path))
    except OSError:
        return  # not there yet, or not a folder (the caller says which)
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError:
            continue
        found = inputs.get((st.st_dev, st.st_ino))
        if found is not None:
            raise ModelFileError(_in_folder(w, found, Path(entry.path)))


def _in_folder(w: Write, r: Read, entry: Path | None) -> str:
    alias = f" (as {str(entry)!r})" if entry is not None else ""
    return (
        f"{w.flag} {str(w.path)!r} holds {r.what} {str(r.path)!r}{alias}, and the folder is "
        f"replaced as a whole: choose a new or empty folder for {w.flag}"
    )


# Locks this process holds, by folder identity: taking one twice in a process would wait on
# itself (flock locks belong to open files, not processes), so a nested take is a no-op.
_held: dict[tuple[int, int], int] = {}


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself (see the module).

    Where the folder cannot be opened for reading or flock is missing, nothing is locked.
    """
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        logger.debug("cannot lock %s (%s); writing without the lock", folder, e)
        yield
        return
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key not in _held:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
    finally:
        os.close(fd)  # releases the lock if this was the take that made it


def fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where a folder can be opened and synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2``).

    Raises OSError (``ENOSYS``, ``EINVAL`` from a filesystem without it) where that is not
    possible; the caller then falls back to two renames and their recovery.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2 is Linux only")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError) as e:  # a libc before glibc 2.28, or none found
        raise OSError(errno.ENOSYS, "renameat2 is not available") from e
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))

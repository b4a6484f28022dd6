"""Where onnxfix writes: the output path checked before any work, and an ``OSError`` met while
writing turned into one :class:`~onnxfix.errors.ModelFileError` saying what to do.

Every output is written under a temporary name beside it and renamed into place
(:mod:`onnxfix.modelio.staging`), so the failures that matter are those of that folder: a full
disk, a file-size limit (``ulimit -f``), a read-only file system, a name longer than the file
system allows. :func:`check_output` refuses what would go wrong before anything is done (an
output that is a device, which the rename would replace; a name too long), and
:func:`writing` translates the rest where they happen, naming the output the user gave rather
than the temporary name. Light: the standard library only, so staging can use it before numpy
and onnx are imported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

from onnxfix.errors import ModelFileError

__all__ = [
    "check_output",
    "temp_prefix",
    "write_error",
    "writing",
    "ignore_file_size_signal",
    "WRITE_ERRNOS",
]

# What goes wrong on the output side, and what to do about it.
_ADVICE = {
    errno.ENOSPC: ("no space is left on its device", "free some space or write it elsewhere"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or write it elsewhere"),
    errno.EFBIG: (
        "it is larger than the file-size limit (ulimit -f) or than the file system allows",
        "raise the limit or write it elsewhere",
    ),
    errno.EROFS: ("the file system is read-only", "write it elsewhere"),
    errno.EACCES: (
        "permission denied",
        "write it elsewhere or change the folder's permissions",
    ),
    errno.EPERM: ("the operation is not permitted", "write it elsewhere"),
    errno.ENAMETOOLONG: (
        "its name or path is too long for the file system",
        "choose a shorter name",
    ),
    errno.EMLINK: ("its folder holds too many entries", "write it elsewhere"),
    errno.EIO: ("the device reported an input/output error", "check the disk and run again"),
}
WRITE_ERRNOS = frozenset(_ADVICE)

# Temporary names start with the output's name cut to this many characters, so that a name
# close to the file system's limit still leaves room for what a temporary name adds.
_PREFIX_CHARS = 64

_NAME_MAX = 255  # bytes in one name, on every file system Linux, macOS and Windows use

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
}


def temp_prefix(out: Path) -> str:
    """The start of a temporary name beside ``out``: hidden, and short enough to fit."""
    return f".{out.name[:_PREFIX_CHARS]}."


def check_output(out: Path, *, what: str = "output", folder: bool = False) -> None:
    """Refuse an output path that cannot be written as a file (or, with ``folder``, a folder)
    renamed into place, before any work is done.

    A device, pipe or socket at ``out`` would be replaced by the rename (``-o /dev/full`` made
    a regular file of ``/dev/full``); a name longer than the file system allows, a read-only
    folder or one without write permission would fail only after all the work.
    """
    shown = f"{what} {str(out)!r}"
    if not out.name:
        raise ModelFileError(f"{shown} names no file; give a file name")
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise _too_long(out, what) from e
        raise write_error(e, shown) from e
    if st is not None:
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is not None:
            raise ModelFileError(
                f"{shown} is {kind}, not a {'folder' if folder else 'file'}; onnxfix writes a "
                "new one and renames it into place, which would replace it. Give the path of a "
                f"{'folder' if folder else 'file'}"
            )
        if stat.S_ISDIR(st.st_mode) and not folder:
            raise ModelFileError(f"{shown} is a folder; give a file name inside it")
    if not out.parent.is_dir():
        raise ModelFileError(
            f"the parent folder of {str(out)!r} does not exist; create it first"
            if folder
            else f"output folder {str(out.parent)!r} does not exist; create it first"
        )
    # Known now rather than after the work (train: after the whole run).
    parent = out.parent
    if hasattr(os, "statvfs") and os.statvfs(parent).f_flag & getattr(os, "ST_RDONLY", 1):
        raise write_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), shown)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise write_error(OSError(errno.EACCES, os.strerror(errno.EACCES)), shown)


def write_error(e: OSError, what: str) -> ModelFileError:
    """``e``, met while writing ``what`` (e.g. ``"output 'x.onnx'"``), as one line saying what
    to do."""
    reason, advice = _ADVICE.get(e.errno or 0, (None, "write it elsewhere"))
    if reason is None:
        reason = e.strerror or type(e).__name__
    return ModelFileError(f"cannot write {what}: {reason}; {advice}. Nothing was written")


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Translate the output-side ``OSError`` (:data:`WRITE_ERRNOS`) raised inside into
    :func:`write_error`; any other OSError (an input that vanished...) passes through.

    A :class:`ModelFileError` raised inside *because of* such an OSError (the writer's, which
    names the temporary file it was writing) is translated the same way, so the message names
    the output the user gave.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise write_error(e, what) from e
    except ModelFileError as e:
        cause = e.__cause__
        if not isinstance(cause, OSError) or cause.errno not in WRITE_ERRNOS:
            raise
        raise write_error(cause, what) from e


def ignore_file_size_signal() -> None:
    """Make a write past the file-size limit (``ulimit -f``) fail with EFBIG, which onnxfix
    reports and cleans up after, instead of killing the process with SIGXFSZ, which leaves its
    temporary files behind. Only the main thread can set it; elsewhere it stays as it is."""
    sig = getattr(signal, "SIGXFSZ", None)
    if sig is None:
        return
    with contextlib.suppress(ValueError, OSError):
        signal.signal(sig, signal.SIG_IGN)


def _too_long(out: Path, what: str) -> ModelFileError:
    name, path = len(os.fsencode(out.name)), len(os.fsencode(str(out)))
    if name > _NAME_MAX:
        return ModelFileError(
            f"{what} name {_short(out.name)!r} is {name} bytes long, more than the file system "
            f"allows ({_NAME_MAX}); choose a shorter name"
        )
    return ModelFileError(
        f"{what} path {_short(str(out))!r} is {path} bytes long, more than the system allows; "
        "choose a shorter path"
    )


def _short(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:20]}...{name[-12:]}"

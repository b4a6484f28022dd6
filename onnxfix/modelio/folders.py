"""An output folder replaced as a whole: built beside it, then swapped in (``replace_folder``).

``make-artifacts`` and ``web`` write their folders this way: everything goes into a private
folder beside the destination (:func:`onnxfix.modelio.staging.private_dir`), which then
takes the destination's place in one ``renameat2(RENAME_EXCHANGE)`` under the parent folder's
lock, so a reader sees the old folder or the new one, never a mix. Where the file system cannot
exchange, the old folder is renamed aside first, and the next run puts it back if the new one
never arrived (:func:`recover_swap`).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from onnxfix.modelio.targets import exchange, folder_lock, fsync_folder
from onnxfix.outputs import temp_prefix

__all__ = ["replace_folder", "recover_swap"]

logger = logging.getLogger(__name__)

# Errors of a file system that cannot exchange two names (renameat2 missing or unsupported).
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def _old_prefix(dest: Path) -> str:
    return f"{temp_prefix(dest)}onnxfix-old."


def replace_folder(staging: Path, dest: Path, check_replaceable: Callable[[], None]) -> None:
    """Put the built folder ``staging`` at ``dest``; the old one, if any, ends at
    ``staging``'s name (the caller removes it).

    Under the parent folder's lock, ``check_replaceable`` runs again when ``dest`` exists
    (raising to refuse): another run may have written there since the first check.
    """
    with folder_lock(dest.parent):
        if not os.path.lexists(dest):
            os.rename(staging, dest)
            fsync_folder(dest.parent)
            return
        check_replaceable()
        try:
            exchange(staging, dest)
        except OSError as e:
            if e.errno not in _NO_EXCHANGE:
                raise
            # Two renames; a kill between them leaves the old folder aside, which the next
            # run puts back (recover_swap).
            old = dest.parent / f"{_old_prefix(dest)}{secrets.token_hex(4)}"
            os.rename(dest, old)
            os.rename(staging, dest)
            fsync_folder(dest.parent)
            shutil.rmtree(old, ignore_errors=True)
            return
        fsync_folder(dest.parent)


def recover_swap(dest: Path) -> None:
    """After the fallback swap of :func:`replace_folder` was killed: put the old folder back
    when the new one never arrived, and remove any left aside beside a present folder."""
    prefix = _old_prefix(dest)
    try:
        olds = sorted(p for p in dest.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return
    olds = [p for p in olds if p.is_dir() and not p.is_symlink()]
    if not olds:
        return
    with folder_lock(dest.parent):
        olds = [p for p in olds if p.exists()]
        if olds and not os.path.lexists(dest):
            os.rename(olds.pop(), dest)
            fsync_folder(dest.parent)
            logger.warning(
                "%s was put back: a run replacing it was killed between two renames", dest
            )
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)

"""Tools for the adversarial tests (tests/hostile/): a watched folder tree, hostile models, and
the one assertion every case makes.

Every case runs in a :class:`Sandbox` (``tmp_path``): ``models/`` holds the model and what it
names, ``outside/`` holds files a model must never reach (``outside/secret``), ``out/`` is
where outputs may go. :meth:`Sandbox.watch` records the whole tree (types, bytes, inodes, link
targets, modes); :func:`refused` then checks a refusal: exit status 1, stdout empty, stderr
exactly ``Error: <message>`` on one line, and nothing in the tree changed, removed or added.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from tests.support.factories import simple_cnn

SECRET = b"outside the model's folder: never read, never written\n" * 64


def _entry(path: Path) -> tuple:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", stat.S_IMODE(st.st_mode))
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return ("file", digest, st.st_ino, stat.S_IMODE(st.st_mode))
    return ("special", stat.S_IFMT(st.st_mode))


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (symlinks not followed), by path relative to it."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = _entry(path)
    return found


@dataclass
class Changes:
    added: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    modified: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified)


@dataclass
class Watch:
    root: Path
    before: dict[str, tuple]

    def changes(self) -> Changes:
        after = tree(self.root)
        return Changes(
            added=set(after) - set(self.before),
            removed=set(self.before) - set(after),
            modified={p for p in set(after) & set(self.before) if after[p] != self.before[p]},
        )


class Sandbox:
    """``root/models`` (the model's folder), ``root/outside/secret``, ``root/out``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.outside = root / "outside"
        self.out = root / "out"
        for folder in (self.models, self.outside, self.out):
            folder.mkdir(exist_ok=True)
        self.secret = self.outside / "secret"
        self.secret.write_bytes(SECRET)

    def watch(self) -> Watch:
        return Watch(self.root, tree(self.root))


def refused(
    result, message: str, watch: Watch, *, allowed: Iterable[str] = (), stdout: str = ""
) -> None:
    """A clean refusal: exit 1, one ``Error:`` line saying ``message``, nothing on stdout (but
    ``stdout``: train's epoch lines, printed as each epoch ends), and the tree as it was but
    for the paths in ``allowed`` (relative to the sandbox root)."""
    stderr = getattr(result, "stderr", "")
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in stderr
    assert stderr == f"Error: {message}\n"
    assert result.stdout == stdout
    unchanged(watch, allowed=allowed)


def unchanged(watch: Watch, *, allowed: Iterable[str] = ()) -> None:
    """Nothing under the watched root changed but the paths in ``allowed`` (and what is in
    them)."""
    changes = watch.changes()
    allowed = tuple(allowed)

    def ok(path: str) -> bool:
        return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)

    assert {p for p in changes.added if not ok(p)} == set(), "added"
    assert {p for p in changes.removed if not ok(p)} == set(), "removed"
    assert {p for p in changes.modified if not ok(p)} == set(), "modified"


def external_model(
    folder: Path,
    *,
    name: str = "m.onnx",
    tensor: str = "conv1.weight",
    location: str = "m.onnx.data",
    offset: int | None = None,
    length: int | None = None,
    write_data: bool = True,
) -> Path:
    """``simple_cnn`` saved in ``folder`` with ``tensor`` kept in external data at the given
    (possibly hostile) location, offset and length; the other weights stay embedded.

    With ``write_data``, the tensor's bytes are written to ``folder/location`` at ``offset``
    when that path lies in ``folder`` (a hostile location names a file the test makes itself).
    The model is written with protobuf directly: onnx.save would refuse the location.
    """
    model = simple_cnn()
    for t in model.graph.initializer:
        if t.name == tensor:
            data = t.raw_data or np.asarray(onnx.numpy_helper.to_array(t)).tobytes()
            t.ClearField("raw_data")
            t.ClearField("float_data")
            entries = {"location": location}
            if offset is not None:
                entries["offset"] = str(offset)
            if length is not None:
                entries["length"] = str(length)
            for key, value in entries.items():
                t.external_data.add(key=key, value=value)
            t.data_location = onnx.TensorProto.EXTERNAL
            target = folder / location
            if write_data and not os.path.isabs(location) and ".." not in Path(location).parts:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as f:
                    f.seek(offset or 0)
                    f.write(data)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path

"""Escapes: a model (or an artifacts folder) names data files, and onnxfix reads them, writes
into them (``--in-place``) and copies them (``-o``, ``export``). Whatever a hostile model names,
only regular files inside its own folder are ever opened, and only for the bytes that exist.

Each case runs a command on a hostile input in the sandbox (``models/`` the inputs,
``outside/secret`` what must never be reached, ``out/`` the only place outputs may go) and
asserts the exit code, the exact message, that the tree is unchanged and that no file holds
the secret's bytes but the secret itself. The same model is given to every command that reads
external data; the spellings that stay inside must work everywhere.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfix.commands.make_artifacts import make_artifacts
from onnxfix.commands.set_kernel import set_kernel
from onnxfix.errors import ModelFileError
from onnxfix.modelio import reader
from onnxfix.training.checkpoint import read_checkpoint, write_checkpoint
from onnxfix.training.layout import load_manifest
from tests.support.factories import save, simple_cnn
from tests.support.hostile import SECRET, Sandbox, refused, unchanged

WEIGHT = "conv1.weight"  # 8x3x3x3 float32: 864 bytes
NBYTES = 864
DATA = "m.onnx.data"
KERNEL = ("--layer", "conv1", "--kernel", "sobel-x")
TENSOR = f"tensor {WEIGHT!r} of 'models/m.onnx'"

# What each kind of refusal says (onnxfix.modelio.external words them once for every command).
MOVE = "Move the data file beside the model and set its location to its name"
POINT = "set its location to the name of the data file beside the model"
CORRUPT = "the model is corrupt, export it again"


def outside(location: str, folder: str = "models", who: str = TENSOR) -> str:
    return (
        f"{who} names external data {location!r}, which is outside the model's folder "
        f"{folder!r}; onnxfix reads data files only from the model's own folder. {MOVE}"
    )


def absolute(location: str, folder: str = "models") -> str:
    return (
        f"{TENSOR} names external data {location!r}, an absolute path; onnxfix reads data files "
        f"only from the model's own folder {folder!r}, by a location relative to it. {MOVE}"
    )


def not_a_file(location: str, what: str, who: str = TENSOR) -> str:
    return f"{who} names external data {location!r}, which is {what}, not a data file; {POINT}"


def itself(location: str, who: str = TENSOR) -> str:
    return f"{who} names external data {location!r}, which is the model file itself; {POINT}"


def missing(location: str) -> str:
    return (
        f"'models/m.onnx' keeps tensor {WEIGHT!r} in {location!r}, which is not in 'models'; "
        "copy the data file next to the model"
    )


def past_end(start: int, stop: int, size: int, data: str = f"models/{DATA}") -> str:
    where = "inside" if start < size else "before"
    return (
        f"{data!r} ends at byte {size}, {where} tensor {WEIGHT!r} (bytes {start} to {stop}); "
        "the data file is truncated, copy it again"
    )


def not_a_count(key: str, value: str) -> str:
    return (
        f"{TENSOR} has external data {key} {value!r}, which is not a byte count (a whole "
        f"number, 0 or more); {CORRUPT}"
    )


def wrong_size(length: int, dims: str = "[8, 3, 3, 3]", location: str | None = DATA) -> str:
    held = (
        f"has {length} bytes of external data in {location!r}"
        if location
        else f"holds {length} bytes"
    )
    need = NBYTES if dims == "[8, 3, 3, 3]" else 2**40 * 27 * 4
    return f"{TENSOR} {held}, but its shape {dims} and type float32 need {need}; {CORRUPT}"


# ------------------------------------------------------------------------- hostile models


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> bytes:
    """simple_cnn with conv1's kernel fixed by set-kernel (sobel-x), all weights embedded: its
    provenance makes verify read the weight, and make-artifacts freeze it."""
    folder = tmp_path_factory.mktemp("fixed")
    save(simple_cnn(), folder / "m.onnx")
    set_kernel(folder / "m.onnx", folder / "f.onnx", layers=["conv1"], kernel="sobel-x")
    return (folder / "f.onnx").read_bytes()


def hostile(
    fixed: bytes,
    folder: Path,
    entries: list[tuple[str, str]] | None,
    *,
    data: bytes | None = None,
    dims: list[int] | None = None,
) -> Path:
    """The fixed model in ``folder`` with conv1.weight's external data ``entries`` (key, value),
    or embedded when None; ``data`` written to ``folder/m.onnx.data``; ``dims`` its new shape."""
    model = onnx.ModelProto.FromString(fixed)
    tensor = next(t for t in model.graph.initializer if t.name == WEIGHT)
    if data is not None:
        (folder / DATA).write_bytes(data)
    if entries is not None:
        tensor.ClearField("raw_data")
        for key, value in entries:
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = onnx.TensorProto.EXTERNAL
    if dims is not None:
        del tensor.dims[:]
        tensor.dims.extend(dims)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save would refuse most of these
    return path


def weight(fixed: bytes) -> bytes:
    model = onnx.ModelProto.FromString(fixed)
    return next(t for t in model.graph.initializer if t.name == WEIGHT).raw_data


def at(location: str, offset: int | str | None = None, length: int | str | None = NBYTES):
    entries = [("location", location)]
    if offset is not None:
        entries.append(("offset", str(offset)))
    if length is not None:
        entries.append(("length", str(length)))
    return entries


@dataclass(frozen=True)
class Case:
    """A hostile model: ``make(sandbox, fixed)`` writes it (models/m.onnx unless it returns
    another path) and ``message(sandbox)`` is the refusal every command prints."""

    make: Callable[[Sandbox, bytes], Path]
    message: Callable[[Sandbox], str]


def _sub_model(sb: Sandbox, fixed: bytes) -> Path:
    (sb.models / "sub").mkdir()
    return hostile(fixed, sb.models / "sub", at("../../outside/secret"))


def _symlink_file(sb: Sandbox, fixed: bytes) -> Path:
    os.symlink("../outside/secret", sb.models / "weights.bin")
    return hostile(fixed, sb.models, at("weights.bin"))


def _symlink_folder(sb: Sandbox, fixed: bytes) -> Path:
    os.symlink("../outside", sb.models / "shared")
    return hostile(fixed, sb.models, at("shared/secret"))


def _hard_link_to_model(sb: Sandbox, fixed: bytes) -> Path:
    path = hostile(fixed, sb.models, at("alias.onnx"))
    os.link(path, sb.models / "alias.onnx")
    return path


def _directory(sb: Sandbox, fixed: bytes) -> Path:
    (sb.models / "weights").mkdir()
    return hostile(fixed, sb.models, at("weights"))


def _fifo(sb: Sandbox, fixed: bytes) -> Path:
    os.mkfifo(sb.models / "weights")  # never opened, by onnxfix or by this test
    return hostile(fixed, sb.models, at("weights"))


def _symlink_loop(sb: Sandbox, fixed: bytes) -> Path:
    os.symlink("loop", sb.models / "loop")
    return hostile(fixed, sb.models, at("loop"))


def _in_a_node_attribute(sb: Sandbox, fixed: bytes) -> Path:
    """The weight embedded, and a Constant node (its output unused) whose value is kept in
    external data: every tensor of the model is held to the rules, not only initializers."""
    model = onnx.ModelProto.FromString(fixed)
    value = onnx.TensorProto(name="const.value", data_type=onnx.TensorProto.FLOAT)
    value.dims.extend([8, 3, 3, 3])
    for key, item in at("../outside/secret"):
        value.external_data.add(key=key, value=item)
    value.data_location = onnx.TensorProto.EXTERNAL
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["unused"], value=value))
    path = sb.models / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _entries(entries, **kw) -> Callable[[Sandbox, bytes], Path]:
    def make(sb: Sandbox, fixed: bytes) -> Path:
        data = kw.get("data", weight(fixed))
        return hostile(fixed, sb.models, entries, data=data, dims=kw.get("dims"))

    return make


HOSTILE = {
    "up-one-folder": Case(
        _entries(at("../outside/secret")), lambda sb: outside("../outside/secret")
    ),
    "up-two-folders": Case(
        _sub_model,
        lambda sb: outside(
            "../../outside/secret",
            "models/sub",
            who=f"tensor {WEIGHT!r} of 'models/sub/m.onnx'",
        ),
    ),
    "absolute-path": Case(
        lambda sb, f: hostile(f, sb.models, at(str(sb.secret))),
        lambda sb: absolute(str(sb.secret)),
    ),
    "absolute-path-inside": Case(
        lambda sb, f: hostile(f, sb.models, at(str(sb.models / DATA)), data=weight(f)),
        lambda sb: absolute(str(sb.models / DATA)),
    ),
    "inside-then-out": Case(
        _entries(at("sub/../../outside/secret")), lambda sb: outside("sub/../../outside/secret")
    ),
    "symlink-file": Case(_symlink_file, lambda sb: outside("weights.bin")),
    "symlink-folder": Case(_symlink_folder, lambda sb: outside("shared/secret")),
    "in-a-node-attribute": Case(
        _in_a_node_attribute,
        lambda sb: outside("../outside/secret", who="tensor 'const.value' of 'models/m.onnx'"),
    ),
    "nul-byte": Case(
        _entries(at("m.onnx.data\0/../../outside/secret")),
        lambda sb: (
            f"{TENSOR} names external data 'm.onnx.data\\x00/../../outside/secret', which "
            f"holds a NUL byte: no file has that name; {CORRUPT}"
        ),
    ),
    "name-too-long": Case(
        _entries(at("w" * 300)),
        lambda sb: (
            f"{TENSOR} names external data {'w' * 300!r}, which cannot be read (File name too "
            "long); copy the data file next to the model"
        ),
    ),
    "symlink-loop": Case(
        _symlink_loop,
        lambda sb: (
            f"{TENSOR} names external data 'loop', which cannot be read (Too many levels of "
            "symbolic links); copy the data file next to the model"
        ),
    ),
    "the-model-itself": Case(_entries(at("m.onnx")), lambda sb: itself("m.onnx")),
    "the-model-by-another-spelling": Case(
        _entries(at("./sub/../m.onnx")), lambda sb: itself("./sub/../m.onnx")
    ),
    "a-hard-link-to-the-model": Case(_hard_link_to_model, lambda sb: itself("alias.onnx")),
    "a-directory": Case(_directory, lambda sb: not_a_file("weights", "a folder")),
    "the-folder-itself": Case(_entries(at(".")), lambda sb: not_a_file(".", "a folder")),
    "a-fifo": Case(_fifo, lambda sb: not_a_file("weights", "a FIFO (named pipe)")),
    "missing": Case(_entries(at("gone.data"), data=None), lambda sb: missing("gone.data")),
    "too-short": Case(_entries(at(DATA), data=b"\1" * 100), lambda sb: past_end(0, NBYTES, 100)),
    "offset-past-the-end": Case(
        _entries(at(DATA, offset=4096)), lambda sb: past_end(4096, 4096 + NBYTES, NBYTES)
    ),
    "offset-past-the-end-no-length": Case(
        _entries(at(DATA, offset=4096, length=None)),
        lambda sb: past_end(4096, 4096 + NBYTES, NBYTES),
    ),
    "huge-offset": Case(
        _entries(at(DATA, offset=10**30)),
        lambda sb: past_end(10**30, 10**30 + NBYTES, NBYTES),
    ),
    "huge-length": Case(_entries(at(DATA, length=2**63)), lambda sb: past_end(0, 2**63, NBYTES)),
    "negative-offset": Case(_entries(at(DATA, offset=-5)), lambda sb: not_a_count("offset", "-5")),
    "garbage-offset": Case(
        _entries(at(DATA, offset="abc")), lambda sb: not_a_count("offset", "abc")
    ),
    "float-offset": Case(_entries(at(DATA, offset="1e3")), lambda sb: not_a_count("offset", "1e3")),
    "spaced-offset": Case(_entries(at(DATA, offset=" 0")), lambda sb: not_a_count("offset", " 0")),
    "negative-length": Case(
        _entries(at(DATA, length=-864)), lambda sb: not_a_count("length", "-864")
    ),
    "garbage-length": Case(
        _entries(at(DATA, length="0x360")), lambda sb: not_a_count("length", "0x360")
    ),
    "length-short-of-the-shape": Case(_entries(at(DATA, length=800)), lambda sb: wrong_size(800)),
    "rest-of-file-longer-than-the-shape": Case(
        _entries(at(DATA, length=None), data=b"\0" * 900), lambda sb: wrong_size(900)
    ),
    "dims-2^40-external": Case(
        _entries(at(DATA), dims=[2**40, 3, 3, 3]),
        lambda sb: wrong_size(NBYTES, f"[{2**40}, 3, 3, 3]"),
    ),
    "dims-2^40-embedded": Case(
        _entries(None, data=None, dims=[2**40, 3, 3, 3]),
        lambda sb: wrong_size(NBYTES, f"[{2**40}, 3, 3, 3]", location=None),
    ),
    "empty-location": Case(
        _entries(at("")),
        lambda sb: f"{TENSOR} is kept in external data but names no location; {CORRUPT}",
    ),
    "no-location": Case(
        _entries([("offset", "0"), ("length", str(NBYTES))]),
        lambda sb: f"{TENSOR} is kept in external data but names no location; {CORRUPT}",
    ),
    "location-twice": Case(
        _entries([("location", DATA), ("location", "../outside/secret")]),
        lambda sb: f"{TENSOR} gives its external data location twice; {CORRUPT}",
    ),
}


def _embedded_short(sb: Sandbox, fixed: bytes) -> Path:
    model = onnx.ModelProto.FromString(fixed)
    tensor = next(t for t in model.graph.initializer if t.name == WEIGHT)
    tensor.raw_data = tensor.raw_data[:800]
    path = sb.models / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _typed_short(sb: Sandbox, fixed: bytes) -> Path:
    model = onnx.ModelProto.FromString(fixed)
    tensor = next(t for t in model.graph.initializer if t.name == WEIGHT)
    tensor.ClearField("raw_data")
    tensor.float_data.extend([0.5] * 100)
    path = sb.models / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


HOSTILE["embedded-short"] = Case(_embedded_short, lambda sb: wrong_size(800, location=None))
HOSTILE["typed-values-short"] = Case(
    _typed_short,
    lambda sb: (
        f"{TENSOR} holds 100 values in float_data, but its shape [8, 3, 3, 3] needs 216; {CORRUPT}"
    ),
)

# Spellings and layouts that stay inside the model's folder: every command works.
INSIDE = {
    "plain": lambda sb, f: hostile(f, sb.models, at(DATA), data=weight(f)),
    "dot-slash": lambda sb, f: hostile(f, sb.models, at("./" + DATA), data=weight(f)),
    "offset-and-rest-of-file": lambda sb, f: hostile(
        f, sb.models, at(DATA, offset=4096, length=None), data=b"\7" * 4096 + weight(f)
    ),
}


def _sub_dot_dot(sb: Sandbox, fixed: bytes) -> Path:
    (sb.models / "sub").mkdir()
    return hostile(fixed, sb.models, at("sub/../" + DATA), data=weight(fixed))


def _in_subfolder(sb: Sandbox, fixed: bytes) -> Path:
    (sb.models / "weights").mkdir()
    (sb.models / "weights" / "w.bin").write_bytes(weight(fixed))
    return hostile(fixed, sb.models, at("weights/w.bin"))


INSIDE["sub-dot-dot"] = _sub_dot_dot
INSIDE["in-a-subfolder"] = _in_subfolder


# ------------------------------------------------------------------------------ commands

# Each command that reads a model's external data: its arguments for the model at ``m`` and
# what a successful run may change (relative to the sandbox root).
MODEL_COMMANDS = {
    "inspect-trainable": (lambda m: ("inspect", "--trainable", m), lambda m, data: []),
    "set-kernel-o": (
        lambda m: ("set-kernel", m, *KERNEL, "-o", "out/f.onnx"),
        lambda m, d: ["out"],
    ),
    "in-place": (lambda m: ("set-kernel", m, *KERNEL, "--in-place"), lambda m, d: [m, *d]),
    "in-place-no-check": (
        lambda m: ("set-kernel", m, *KERNEL, "--in-place", "--no-check"),
        lambda m, d: [m, *d],
    ),
    "make-artifacts": (lambda m: ("make-artifacts", m, "-o", "out/art"), lambda m, d: ["out"]),
    "verify": (lambda m: ("verify", m), lambda m, d: []),
}


def no_secret_copied(sb: Sandbox) -> None:
    """No file but the secret (under any of its names) holds its bytes; it is as it was."""
    assert sb.secret.read_bytes() == SECRET
    for folder, _, files in os.walk(sb.root):
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and not path.samefile(sb.secret):
                assert SECRET[:64] not in path.read_bytes(), path


@pytest.fixture
def here(sandbox, monkeypatch) -> Sandbox:
    """The sandbox as the current directory, so messages name paths as a user types them."""
    monkeypatch.chdir(sandbox.root)
    return sandbox


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_external_data_is_refused_by_every_command(run, here, fixed, case, command):
    path = HOSTILE[case].make(here, fixed)
    args, _ = MODEL_COMMANDS[command]
    watch = here.watch()
    result = run(*args(str(path.relative_to(here.root))))
    refused(result, HOSTILE[case].message(here), watch)
    no_secret_copied(here)


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("case", INSIDE)
def test_data_inside_the_folder_works_for_every_command(run, here, fixed, case, command):
    path = INSIDE[case](here, fixed)
    model = str(path.relative_to(here.root))
    args, changes = MODEL_COMMANDS[command]
    data = [str(p.relative_to(here.root)) for p in here.models.rglob("*") if p.is_file()]
    watch = here.watch()
    result = run(*args(model))
    assert result.exit_code == 0, result.output
    unchanged(watch, allowed=changes(model, data))
    no_secret_copied(here)
    written = {"set-kernel-o": "out/f.onnx", "in-place": model, "in-place-no-check": model}
    if command in written:  # the kernel is in the result, as recorded
        assert run("verify", written[command]).exit_code == 0


@pytest.mark.parametrize("no_check", [False, True], ids=["checked", "no-check"])
def test_in_place_never_writes_through_a_hard_link(run, here, fixed, no_check):
    """A data file with another name (which may be outside the folder) is not patched in place:
    the write would change the other name too. The outside file is a hard link here."""
    os.link(here.secret, here.models / DATA)
    path = hostile(fixed, here.models, at(DATA))
    watch = here.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "--in-place", *(["--no-check"] * no_check))
    refused(
        result,
        f"{TENSOR} names external data {DATA!r}, which has other names too (hard links); "
        "writing it in place would change them all. Write a copy with -o",
        watch,
    )
    assert path.exists()
    no_secret_copied(here)


# The cases whose location itself is refused (not its numbers or sizes).
REFUSED_LOCATIONS = [
    "up-one-folder",
    "up-two-folders",
    "absolute-path",
    "absolute-path-inside",
    "inside-then-out",
    "symlink-file",
    "symlink-folder",
    "nul-byte",
    "name-too-long",
    "symlink-loop",
    "the-model-itself",
    "the-model-by-another-spelling",
    "a-hard-link-to-the-model",
    "a-directory",
    "the-folder-itself",
    "a-fifo",
    "missing",
    "location-twice",
]


@pytest.mark.parametrize("case", REFUSED_LOCATIONS)
def test_the_copy_ahead_never_starts_on_a_refused_location(here, fixed, case):
    """set-kernel starts copying the model's first data file before the model is read
    (modelio.staging), in a thread whose copy no test sees: the guess must name no file the
    read refuses."""
    path = HOSTILE[case].make(here, fixed)
    assert reader.first_external_location(path) is None


def test_the_copy_ahead_names_a_data_file_inside(here, fixed):
    path = INSIDE["sub-dot-dot"](here, fixed)
    assert reader.first_external_location(path) == "sub/../" + DATA


# ----------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, fixed) -> Path:
    """Artifacts of the fixed model, with the checkpoint split as ONNX Runtime writes one above
    2 GB (``checkpoint.data`` holds the payloads of 1 KiB or more)."""
    folder = tmp_path_factory.mktemp("artifacts")
    model = folder / "m.onnx"
    model.write_bytes(fixed)
    art = folder / "art"
    manifest = make_artifacts(model, art, self_test=False).manifest
    values = {t.name: t for t in onnx.load(str(art / "inference_model.onnx")).graph.initializer}
    properties = read_checkpoint(art / "checkpoint").properties
    (art / "checkpoint").unlink()
    write_checkpoint(
        art / "checkpoint",
        [values[n] for n in manifest.trainable],
        [values[n] for n in manifest.frozen],
        properties=properties,
        single_file_limit=0,
    )
    assert (art / "checkpoint.data").stat().st_size > 0
    return art


def _tamper_model(name: str, tensor: str | None, location: str):
    """``name`` in the artifacts with an initializer's data moved to external ``location``."""

    def tamper(sb: Sandbox, art: Path) -> None:
        path = art / name
        model = onnx.load(str(path))
        target = next(t for t in model.graph.initializer if tensor in (None, t.name))
        data = onnx.numpy_helper.to_array(target).tobytes()
        for field in ("raw_data", "float_data", "int64_data", "int32_data"):
            target.ClearField(field)
        for key, value in at(location, length=len(data)):
            target.external_data.add(key=key, value=value)
        target.data_location = onnx.TensorProto.EXTERNAL
        path.write_bytes(model.SerializeToString())

    return tamper


def _checkpoint_data(kind: str):
    def tamper(sb: Sandbox, art: Path) -> None:
        data = art / "checkpoint.data"
        size = data.stat().st_size
        data.unlink()
        if kind == "symlink":
            os.symlink("../../outside/secret", data)
        elif kind == "fifo":
            os.mkfifo(data)
        elif kind == "folder":
            data.mkdir()
        elif kind == "short":
            data.write_bytes(b"\0" * (size - 1))
        elif kind == "hard-link-to-checkpoint":
            os.link(art / "checkpoint", data)

    return tamper


CKPT = "checkpoint 'models/art/checkpoint'"
KEEPS = f"{CKPT} keeps its values in 'checkpoint.data'"
PUT = "put the data file itself beside the checkpoint, or make the artifacts again"


ARTIFACT_CASES = {
    # case: (tamper, message, the commands that read what was tampered)
    "inference-model-names-outside": (
        _tamper_model("inference_model.onnx", WEIGHT, "../../outside/secret"),
        outside(
            "../../outside/secret",
            "models/art",
            who=f"tensor {WEIGHT!r} of 'models/art/inference_model.onnx'",
        ),
        ["export"],
    ),
    "inference-model-names-itself": (
        _tamper_model("inference_model.onnx", WEIGHT, "inference_model.onnx"),
        itself(
            "inference_model.onnx", who=f"tensor {WEIGHT!r} of 'models/art/inference_model.onnx'"
        ),
        ["export"],
    ),
    "inference-model-names-the-checkpoint-folder": (
        _tamper_model("inference_model.onnx", WEIGHT, "."),
        not_a_file(".", "a folder", who=f"tensor {WEIGHT!r} of 'models/art/inference_model.onnx'"),
        ["export"],
    ),
    "training-model-names-outside": (
        _tamper_model("training_model.onnx", None, "../../outside/secret"),
        None,  # filled below: the tensor's name is onnxblock's
        ["train"],
    ),
    "eval-model-names-outside": (
        _tamper_model("eval_model.onnx", None, "../../outside/secret"),
        None,
        ["train"],
    ),
    "checkpoint-data-symlink-out": (
        _checkpoint_data("symlink"),
        f"{KEEPS}, which is outside the checkpoint's folder 'models/art'; onnxfix reads data "
        "files only from the checkpoint's own folder. Put the data file itself beside the "
        "checkpoint, or make the artifacts again",
        ["export", "verify", "verify-checkpoint", "train"],
    ),
    "checkpoint-data-fifo": (
        _checkpoint_data("fifo"),
        f"{KEEPS}, which is a FIFO (named pipe), not a data file; {PUT}",
        ["export", "verify", "verify-checkpoint", "train"],
    ),
    "checkpoint-data-folder": (
        _checkpoint_data("folder"),
        f"{KEEPS}, which is a folder, not a data file; {PUT}",
        ["export", "verify", "verify-checkpoint", "train"],
    ),
    "checkpoint-data-is-the-checkpoint": (
        _checkpoint_data("hard-link-to-checkpoint"),
        f"{KEEPS}, which is the checkpoint file itself; {PUT}",
        ["export", "verify", "verify-checkpoint", "train"],
    ),
    "checkpoint-data-short": (
        _checkpoint_data("short"),
        None,  # filled below: the sizes are the checkpoint's
        ["export", "verify", "verify-checkpoint", "train"],
    ),
}

ARTIFACT_COMMANDS = {
    "export": ("export", "models/art", "-o", "out/f.onnx"),
    "verify": ("verify", "models/art"),
    "verify-checkpoint": ("verify", "models/art/checkpoint"),
    "train": ("train", "models/art", "--data", "data.npz", "--checkpoint-out", "out/ck"),
}


def _first_initializer(art: Path, name: str) -> str:
    return onnx.load(str(art / name), load_external_data=False).graph.initializer[0].name


def _expected(case: str, art: Path) -> str:
    """The refusal for ``case``, worked out from the artifacts before they are tampered with."""
    _, message, _ = ARTIFACT_CASES[case]
    if message is not None:
        return message
    if case == "checkpoint-data-short":  # one byte short of the last payload's end
        stored = read_checkpoint(art / "checkpoint")
        size = (art / "checkpoint.data").stat().st_size
        last = max(
            (p for p in stored.parameters.values() if p.path.name == "checkpoint.data"),
            key=lambda p: p.offset + p.length,
        )
        assert last.offset + last.length == size
        return (
            f"'models/art/checkpoint.data' ends at byte {size - 1}, inside parameter "
            f"{last.name!r} (bytes {last.offset} to {size}); the data file is truncated, copy it "
            "again"
        )
    name = "training_model.onnx" if case.startswith("training") else "eval_model.onnx"
    return outside(
        "../../outside/secret",
        "models/art",
        who=f"tensor {_first_initializer(art, name)!r} of 'models/art/{name}'",
    )


def _place_artifacts(sb: Sandbox, artifacts: Path) -> Path:
    art = sb.models / "art"
    shutil.copytree(artifacts, art)
    manifest = load_manifest(art)
    rng = np.random.default_rng(0)
    np.savez(
        sb.root / "data.npz",
        **{s.name: rng.normal(size=(2, *s.shape[1:])).astype(s.dtype) for s in manifest.feeds},
    )
    return art


@pytest.mark.parametrize(
    ("case", "command"),
    [(case, command) for case, (_, _, commands) in ARTIFACT_CASES.items() for command in commands],
)
def test_tampered_artifacts_are_refused(run, here, artifacts, case, command):
    art = _place_artifacts(here, artifacts)
    message = _expected(case, art)
    ARTIFACT_CASES[case][0](here, art)
    watch = here.watch()
    result = run(*ARTIFACT_COMMANDS[command])
    refused(result, message, watch)
    no_secret_copied(here)


@pytest.mark.parametrize("command", ARTIFACT_COMMANDS)
def test_a_split_checkpoint_in_its_folder_works(run, here, artifacts, command):
    _place_artifacts(here, artifacts)
    watch = here.watch()
    result = run(*ARTIFACT_COMMANDS[command])
    assert result.exit_code == 0, result.output
    unchanged(watch, allowed=["out"])
    no_secret_copied(here)


def test_a_checkpoint_is_never_written_from_data_outside_the_folder(here):
    """The build's checkpoint writer reads parameters kept in external data (references into
    the model's folder) under the same rules, whoever calls it."""
    tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4])
    for key, value in at("../outside/secret", length=16):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    watch = here.watch()
    with pytest.raises(ModelFileError) as e:
        write_checkpoint(Path("out/ck"), [tensor], [], base_dir=Path("models"))
    assert str(e.value) == outside("../outside/secret", who="parameter 'w'")
    unchanged(watch)

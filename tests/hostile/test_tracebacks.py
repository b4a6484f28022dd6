"""Hostile and broken input that used to end in a traceback: each must become one ``Error:``
line, exit status 1, saying what to do, with every input unchanged and nothing left behind.

- the output side: a device or pipe as the output, a name too long, a read-only folder, a full
  disk, a file-size limit (``ulimit -f``), the checkpoint save of ``train``;
- payload sizes checked against dims: the checkpoint reader, provenance records;
- onnx.checker and shape inference failing inside make-artifacts' build child and
  ``inspect --trainable``, their messages of several lines;
- kernel specs: deep or huge literals, degenerate filter parameters, ``.npy``/``.npz`` headers
  claiming more than the file holds, ``--kernels`` given an ``.npy``;
- training data: no samples, 0-d arrays, truncated or empty archives, huge headers,
  ``--seed -1``, ``--input-shape`` values out of range;
- damaged artifacts: the manifest, the checkpoint (missing, flipped, non-UTF-8), provenance;
- the Python API: arrays as kernels, one selector as a str.

A full disk, a read-only file system and a file-size limit are real here: a tmpfs mounted in a
private mount namespace (``unshare -m``, skipped where that is not allowed; a read-only folder
is also simulated in-process, which runs everywhere) and ``RLIMIT_FSIZE`` in a child process,
whose SIGXFSZ onnxfix itself must ignore (the test does not).
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxfix
from onnxfix.errors import (
    ArtifactsError,
    KernelShapeError,
    KernelSpecError,
    OnnxfixError,
    ProvenanceError,
    TrainingDataError,
)
from onnxfix.training.checkpoint import read_checkpoint, write_checkpoint
from tests.support.factories import save, simple_cnn
from tests.support.hostile import Sandbox, refused, unchanged

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> bytes:
    """simple_cnn with conv1 set to sobel-x (a recorded fixed kernel), as bytes."""
    folder = tmp_path_factory.mktemp("fixed")
    src = save(simple_cnn(), folder / "cnn.onnx")
    onnxfix.set_kernel(src, folder / "fixed.onnx", layers=["conv1"], kernel="sobel-x")
    return (folder / "fixed.onnx").read_bytes()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, fixed) -> Path:
    folder = tmp_path_factory.mktemp("artifacts")
    (folder / "m.onnx").write_bytes(fixed)
    onnxfix.make_artifacts(folder / "m.onnx", folder / "art", loss="cross-entropy", self_test=False)
    return folder / "art"


@pytest.fixture
def here(sandbox, monkeypatch) -> Sandbox:
    """The sandbox as the current directory, so messages name paths as a user types them."""
    monkeypatch.chdir(sandbox.root)
    return sandbox


def _model(sb: Sandbox, fixed: bytes, name: str = "m.onnx") -> str:
    (sb.models / name).write_bytes(fixed)
    return f"models/{name}"


def _art(sb: Sandbox, artifacts: Path) -> str:
    shutil.copytree(artifacts, sb.models / "art")
    return "models/art"


def _data(sb: Sandbox, name: str = "data.npz", count: int = 4, **arrays) -> str:
    rng = np.random.default_rng(0)
    given = {
        "x": rng.normal(size=(count, 3, 16, 16)).astype(np.float32),
        "labels": np.arange(count, dtype=np.int64) % 10,
    }
    given.update(arrays)
    np.savez(sb.root / name, **given)
    return name


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())  # no checker: these models are broken


SET_KERNEL = ("set-kernel", "--layer", "conv1", "--kernel", "sobel-x", "-o")


def _commands(sb: Sandbox, fixed: bytes, artifacts: Path) -> dict[str, tuple]:
    """Each command that writes, as a function of where it writes."""
    model = _model(sb, fixed)
    art = _art(sb, artifacts)
    data = _data(sb)
    return {
        "set-kernel": lambda out: (SET_KERNEL[0], model, *SET_KERNEL[1:], out),
        "export": lambda out: ("export", art, "-o", out),
        "make-artifacts": lambda out: ("make-artifacts", model, "-o", out, "--no-self-test"),
        "train": lambda out: ("train", art, "--data", data, "--checkpoint-out", out),
    }


WHAT = {
    "set-kernel": "output",
    "export": "output",
    "make-artifacts": "output folder",
    "train": "checkpoint",
}
ADVICE = {
    "read-only": "the file system is read-only; write it elsewhere",
    "full": "no space is left on its device; free some space or write it elsewhere",
    "limit": (
        "it is larger than the file-size limit (ulimit -f) or than the file system allows; "
        "raise the limit or write it elsewhere"
    ),
}

# ------------------------------------------------------------- the output side: the path


def _device(path: Path) -> None:
    """A character device like /dev/full (1, 7) at ``path``; skips where mknod is not allowed."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device needs CAP_MKNOD")


@pytest.mark.parametrize("command", list(WHAT))
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_an_output_that_is_a_device_or_pipe_is_refused_not_replaced(
    run, here, fixed, artifacts, command, kind
):
    """``-o /dev/full`` used to stage beside it, in /dev, and rename over the device."""
    args = _commands(here, fixed, artifacts)[command]
    target = here.out / "full"
    _device(target) if kind == "device" else os.mkfifo(target)
    watch = here.watch()
    result = run(*args("out/full"))
    what = "a character device" if kind == "device" else "a named pipe (FIFO)"
    thing = "folder" if command == "make-artifacts" else "file"
    refused(
        result,
        f"{WHAT[command]} 'out/full' is {what}, not a {thing}; onnxfix writes a new one and "
        f"renames it into place, which would replace it. Give the path of a {thing}",
        watch,
    )


def test_dash_o_dev_full_itself(run, here, fixed, monkeypatch):
    """The literal case of the issue, with a net: no rename may touch /dev."""
    real_replace, real_rename = os.replace, os.rename

    def guarded(real):
        def call(src, dst, *args, **kwargs):
            assert not os.path.abspath(dst).startswith("/dev/"), f"would replace {dst}"
            return real(src, dst, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "replace", guarded(real_replace))
    monkeypatch.setattr(os, "rename", guarded(real_rename))
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not a character device here")
    model = _model(here, fixed)
    before = sorted(os.listdir("/dev"))
    watch = here.watch()
    result = run(*SET_KERNEL[:1], model, *SET_KERNEL[1:], "/dev/full")
    refused(
        result,
        "output '/dev/full' is a character device, not a file; onnxfix writes a new one and "
        "renames it into place, which would replace it. Give the path of a file",
        watch,
    )
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert sorted(os.listdir("/dev")) == before


@pytest.mark.parametrize("command", list(WHAT))
def test_a_name_too_long_is_refused_before_any_work(run, here, fixed, artifacts, command):
    args = _commands(here, fixed, artifacts)[command]
    name = "n" * 256
    watch = here.watch()
    result = run(*args(f"out/{name}"))
    refused(
        result,
        f"{WHAT[command]} name '{'n' * 20}...{'n' * 12}' is 256 bytes long, more than the file "
        "system allows (255); choose a shorter name",
        watch,
    )


def test_a_path_too_long_is_refused(run, here, fixed):
    model = _model(here, fixed)
    out = "out/" + "d/" * 2100 + "f.onnx"
    watch = here.watch()
    result = run(*SET_KERNEL[:1], model, *SET_KERNEL[1:], out)
    refused(
        result,
        f"output path '{out[:20]}...{out[-12:]}' is {len(out)} bytes long, more than the "
        "system allows; choose a shorter path",
        watch,
    )


@pytest.mark.parametrize("command", ["set-kernel", "export"])
def test_a_name_at_the_limit_works_the_temporary_names_fit(run, here, fixed, artifacts, command):
    """255 bytes is a legal name: the temporary names beside it must not pass the limit."""
    args = _commands(here, fixed, artifacts)[command]
    name = "k" * 250 + ".onnx"
    watch = here.watch()
    result = run(*args(f"out/{name}"))
    assert result.exit_code == 0, result.output
    assert (here.out / name).is_file()
    unchanged(watch, allowed=[f"out/{name}"])


# ------------------------------------------- the output side: a read-only folder, simulated


@pytest.mark.parametrize("command", ["set-kernel", "export", "make-artifacts"])
def test_a_read_only_folder_simulated(run, here, fixed, artifacts, command, monkeypatch):
    """EROFS from the first write in out/ (mkdir of the temporary folder), where a real
    read-only mount is not available; root ignores permissions, so chmod cannot do it."""
    args = _commands(here, fixed, artifacts)[command]
    real = os.mkdir
    out = str(here.out)

    def mkdir(path, *a, **k):
        if os.path.abspath(path).startswith(out + os.sep):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    target = "out/a" if command == "make-artifacts" else "out/f.onnx"
    watch = here.watch()
    result = run(*args(target))
    what = "the artifacts folder" if command == "make-artifacts" else "output"
    refused(
        result, f"cannot write {what} '{target}': {ADVICE['read-only']}. Nothing was written", watch
    )


def test_train_checkpoint_save_failing_leaves_no_temporary_file(run, here, artifacts, monkeypatch):
    """ONNX Runtime writes the checkpoint itself and fails with its own text (simulated here:
    a real full disk is below); nothing may stay behind, the old checkpoint neither."""
    from onnxfix.training.ort import training_api

    art = _art(here, artifacts)
    data = _data(here)
    state_class = training_api().CheckpointState

    def failing(state, path, *a, **k):
        Path(path).write_bytes(b"half a checkpoint")  # what a failed write leaves
        raise RuntimeError(
            "/onnxruntime_src/orttraining/orttraining/python/orttraining_pybind_state.cc:937 "
            "onnxruntime::python::addObjectMethodsForTraining(pybind11::module&)::<lambda()> "
            "[ONNXRuntimeError] : 1 : FAIL : checkpoint.cc:231 ToFile Failed to save "
            f"checkpoint to file: {path}. error:No space left on device errno:28"
        )

    monkeypatch.setattr(state_class, "save_checkpoint", staticmethod(failing))
    watch = here.watch()
    result = run("train", art, "--data", data)
    # no models/art/.checkpoint.tmp, the checkpoint as it was; the epoch was reported as it ended
    (line,) = result.stdout.splitlines()
    assert line.startswith("epoch 1: train loss ")
    refused(
        result,
        f"cannot write checkpoint '{art}/checkpoint': {ADVICE['full']}. Nothing was written",
        watch,
        stdout=result.stdout,
    )


# ------------------------------- the output side: real read-only, full disk, size limits


@functools.lru_cache(maxsize=1)
def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=4k tmpfs "$d"'],
        capture_output=True,
    )
    return probe.returncode == 0


def _onnxfix_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": root + (os.pathsep + path if path else ""),
        "PYTHONDONTWRITEBYTECODE": "1",  # a cache write past the size limit is not the test
    }


def _in_tmpfs(sb: Sandbox, options: str, args: tuple) -> tuple[SimpleNamespace, list[str]]:
    """``onnxfix ARGS`` with a tmpfs (``options``) mounted on out/ in a private mount
    namespace; the result and what out/ holds afterwards."""
    if not _can_mount():
        pytest.skip("no private mount namespace here (unshare -m and mount need root)")
    script = (
        'mount -t tmpfs -o "$0" tmpfs out || exit 99; "$@"; s=$?; '
        "printf '\\n::left::'; ls -A out; exit $s"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, options, sys.executable, "-m", "onnxfix", *args],
        capture_output=True,
        text=True,
        cwd=sb.root,
        env=_onnxfix_env(),
    )
    assert proc.returncode != 99, proc.stderr
    stdout, _, left = proc.stdout.rpartition("\n::left::")
    result = SimpleNamespace(
        exit_code=proc.returncode, stdout=stdout, stderr=proc.stderr, output=proc.stderr
    )
    return result, left.split()


@pytest.mark.parametrize("command", list(WHAT))
def test_a_read_only_file_system(here, fixed, artifacts, command):
    args = _commands(here, fixed, artifacts)[command]
    target = "out/a" if command == "make-artifacts" else "out/f"
    watch = here.watch()
    result, left = _in_tmpfs(here, "ro", args(target))
    refused(
        result,
        f"cannot write {WHAT[command]} '{target}': {ADVICE['read-only']}. Nothing was written",
        watch,
    )
    assert left == []


# The smallest tmpfs each command runs out of space in (the child of make-artifacts needs room
# to report its error).
FULL = {"set-kernel": "8k", "export": "4k", "make-artifacts": "16k", "train": "4k"}


@pytest.mark.slow  # a real full device and RLIMIT_FSIZE in child processes
@pytest.mark.parametrize("command", list(WHAT))
def test_a_full_disk(here, fixed, artifacts, command):
    args = _commands(here, fixed, artifacts)[command]
    target = "out/a" if command == "make-artifacts" else "out/f"
    watch = here.watch()
    result, left = _in_tmpfs(here, f"size={FULL[command]}", args(target))
    what = {
        "set-kernel": "output 'out/f'",
        "export": "output 'out/f'",
        "make-artifacts": f"the artifacts in '{here.out}'",
        "train": "checkpoint 'out/f'",
    }[command]
    assert result.stderr == f"Error: cannot write {what}: {ADVICE['full']}. Nothing was written\n"
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    unchanged(watch)
    assert left == []  # no temporary folder or file in the full file system


def _limited(sb: Sandbox, args: tuple, limit: int = 4096) -> SimpleNamespace:
    """``onnxfix ARGS`` under ``ulimit -f`` (RLIMIT_FSIZE): SIGXFSZ as the shell leaves it, so
    onnxfix has to make the write fail instead of the process."""

    def limit_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "onnxfix", *args],
        capture_output=True,
        text=True,
        cwd=sb.root,
        env=_onnxfix_env(),
        preexec_fn=limit_size,
    )
    return SimpleNamespace(
        exit_code=proc.returncode, stdout=proc.stdout, stderr=proc.stderr, output=proc.stderr
    )


@pytest.mark.slow  # a real full device and RLIMIT_FSIZE in child processes
@pytest.mark.parametrize("command", list(WHAT))
def test_a_file_size_limit(here, fixed, artifacts, command):
    args = _commands(here, fixed, artifacts)[command]
    target = "out/a" if command == "make-artifacts" else "out/f"
    watch = here.watch()
    result = _limited(here, args(target))
    what = {
        "set-kernel": "output 'out/f'",
        "export": "output 'out/f'",
        "make-artifacts": f"the artifacts in '{here.out}'",
        "train": "checkpoint 'out/f'",
    }[command]
    # train reports each epoch as it ends, before the checkpoint's write fails
    stdout = result.stdout if command == "train" else ""
    assert all(line.startswith("epoch ") for line in stdout.splitlines())
    refused(
        result, f"cannot write {what}: {ADVICE['limit']}. Nothing was written", watch, stdout=stdout
    )


def test_a_file_size_limit_on_train_keeps_the_checkpoint(here, artifacts):
    """The save over ARTIFACTS/checkpoint fails: the old one stays, no .checkpoint.tmp."""
    art = _art(here, artifacts)
    data = _data(here)
    watch = here.watch()
    result = _limited(here, ("train", art, "--data", data))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot write checkpoint '{art}/checkpoint': {ADVICE['limit']}. Nothing was "
        "written\n"
    )
    unchanged(watch)


# ------------------------------------------------------------------- checkpoint payloads


CKPT = "checkpoint 'models/art/checkpoint'"
AGAIN = "make the artifacts again"
READERS = {
    "export": lambda art: ("export", art, "-o", "out/f.onnx"),
    "verify": lambda art: ("verify", art),
    "train": lambda art: ("train", art, "--data", "data.npz", "--checkpoint-out", "out/ck"),
}


def _patch_dims(path: Path, dims: tuple[int, ...]) -> None:
    """conv1.weight's dims (8, 3, 3, 3) in the checkpoint's flatbuffer replaced by ``dims``."""
    data = path.read_bytes()
    old = struct.pack("<4q", 8, 3, 3, 3)
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, struct.pack("<4q", *dims)))


def _flip(at: int, mask: int = 0xFF):
    def tamper(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[at] ^= mask
        path.write_bytes(bytes(data))

    return tamper


def _non_utf8_property(path: Path) -> int:
    data = bytearray(path.read_bytes())
    at = data.index(b"onnxfix.fixed_kernels")
    data[at] = 0xFF
    path.write_bytes(bytes(data))
    return at


TRUNCATED = f"{CKPT} is truncated or not an ONNX Runtime checkpoint; {AGAIN}"
CHECKPOINT_CASES = {
    # case: (tamper, message)
    "dims-2^40": (
        lambda p: _patch_dims(p, (1 << 40, 3, 3, 3)),
        f"{CKPT} is damaged: parameter 'conv1.weight' holds 864 bytes, its dims "
        f"[1099511627776, 3, 3, 3] and type need {(1 << 40) * 27 * 4}; {AGAIN}",
    ),
    "dims-0": (
        lambda p: _patch_dims(p, (0, 3, 3, 3)),
        f"{CKPT} is damaged: parameter 'conv1.weight' holds 864 bytes, its dims [0, 3, 3, 3] "
        f"and type need 0; {AGAIN}",
    ),
    "dims-lie-by-one": (
        lambda p: _patch_dims(p, (9, 3, 3, 3)),
        f"{CKPT} is damaged: parameter 'conv1.weight' holds 864 bytes, its dims [9, 3, 3, 3] "
        f"and type need 972; {AGAIN}",
    ),
    "dims-negative": (
        lambda p: _patch_dims(p, (-8, 3, 3, 3)),
        f"{CKPT} is damaged: parameter 'conv1.weight' has dims [-8, 3, 3, 3]; {AGAIN}",
    ),
    "root-offset-flipped": (_flip(3), TRUNCATED),
    "identifier-flipped": (
        _flip(4),
        "'models/art/checkpoint' is not an ONNX Runtime training checkpoint (no ODTC identifier)",
    ),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:200]), TRUNCATED),
    "empty": (
        lambda p: p.write_bytes(b""),
        "'models/art/checkpoint' is not an ONNX Runtime training checkpoint (no ODTC identifier)",
    ),
    "garbage-after-the-header": (
        lambda p: p.write_bytes(p.read_bytes()[:8] + b"\xff" * (p.stat().st_size - 8)),
        TRUNCATED,
    ),
}


def _place_for_readers(sb: Sandbox, artifacts: Path) -> Path:
    art = _art(sb, artifacts)
    _data(sb)
    return sb.root / art


@pytest.mark.parametrize("command", list(READERS))
@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_a_damaged_checkpoint(run, here, artifacts, case, command):
    art = _place_for_readers(here, artifacts)
    tamper, message = CHECKPOINT_CASES[case]
    tamper(art / "checkpoint")
    watch = here.watch()
    refused(run(*READERS[command]("models/art")), message, watch)


@pytest.mark.parametrize("command", list(READERS))
def test_a_checkpoint_property_that_is_not_utf8(run, here, artifacts, command):
    """ONNX Runtime loads it (and train used to save it on); onnxfix's reader refused it with
    a UnicodeDecodeError."""
    art = _place_for_readers(here, artifacts)
    at = _non_utf8_property(art / "checkpoint")
    watch = here.watch()
    refused(
        run(*READERS[command]("models/art")),
        f"{CKPT} is damaged: a name or property at byte {at} is not UTF-8 text; {AGAIN}",
        watch,
    )


def test_a_parameter_of_a_type_that_is_no_number(run, here, artifacts):
    art = _place_for_readers(here, artifacts)
    tensor = helper.make_tensor("w", onnx.TensorProto.COMPLEX64, [2], vals=[1 + 2j, 3 + 4j])
    properties = read_checkpoint(art / "checkpoint").properties
    write_checkpoint(art / "checkpoint", [], [tensor], properties=properties)
    watch = here.watch()
    refused(
        run("verify", "models/art"),
        f"{CKPT} is damaged: parameter 'w' has element type 14, not a number type; {AGAIN}",
        watch,
    )


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_every_flipped_byte_of_a_checkpoint_is_an_error_or_harmless(tmp_path, artifacts):
    """Each byte of the checkpoint flipped in turn: the reader and verify either work or
    raise a one-line OnnxfixError, never anything else."""
    from onnxfix import verify

    original = (artifacts / "checkpoint").read_bytes()
    path = tmp_path / "checkpoint"
    for at in range(len(original)):
        flipped = bytearray(original)
        flipped[at] ^= 0xFF
        path.write_bytes(bytes(flipped))
        try:
            verify(path)
        except OnnxfixError as e:
            assert "\n" not in str(e), (at, str(e))


@pytest.mark.parametrize("command", list(READERS))
def test_a_missing_checkpoint(run, here, artifacts, command):
    art = _place_for_readers(here, artifacts)
    (art / "checkpoint").unlink()
    watch = here.watch()
    message = {
        "export": "checkpoint 'models/art/checkpoint' does not exist",
        "verify": (
            "'models/art' is a folder without a checkpoint; give a model, an artifacts folder "
            "or a checkpoint"
        ),
        "train": (
            "'models/art/checkpoint' does not exist or is not a file; the artifacts folder is "
            "incomplete, make it again with 'onnxfix make-artifacts'"
        ),
    }[command]
    refused(run(*READERS[command]("models/art")), message, watch)


@pytest.mark.parametrize(
    "missing", ["training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"]
)
def test_train_with_a_model_missing_from_the_artifacts(run, here, artifacts, missing):
    art = _place_for_readers(here, artifacts)
    (art / missing).unlink()
    watch = here.watch()
    refused(
        run(*READERS["train"]("models/art")),
        f"'models/art/{missing}' does not exist or is not a file; the artifacts folder is "
        "incomplete, make it again with 'onnxfix make-artifacts'",
        watch,
    )


# ---------------------------------------------------------------------- the manifest


MANIFEST = "'models/art/onnxfix.json'"
MAKE_AGAIN = "make the artifacts again with 'onnxfix make-artifacts'"


def _manifest_edit(edit):
    def tamper(path: Path) -> None:
        obj = json.loads(path.read_text())
        edit(obj)
        path.write_text(json.dumps(obj))

    return tamper


MANIFEST_CASES = {
    "not-json": (
        lambda p: p.write_text("{not json"),
        f"{MANIFEST} is not a readable JSON file (Expecting property name enclosed in double "
        f"quotes: line 1 column 2 (char 1)); {MAKE_AGAIN}",
    ),
    "a-list": (lambda p: p.write_text("[1, 2]"), f"{MANIFEST} holds no JSON object; {MAKE_AGAIN}"),
    "nested-too-deep": (
        lambda p: p.write_text("[" * 100000 + "]" * 100000),
        f"{MANIFEST} is not a readable JSON file (maximum recursion depth exceeded while "
        f"decoding a JSON array from a unicode string); {MAKE_AGAIN}",
    ),
    "not-utf8": (
        lambda p: p.write_bytes(b'{"a": "\xff"}'),
        f"{MANIFEST} is not a readable JSON file ('utf-8' codec can't decode byte 0xff in "
        f"position 7: invalid start byte); {MAKE_AGAIN}",
    ),
    "bogus-input-dtype": (
        _manifest_edit(lambda m: m["inputs"][0].update(dtype="float128")),
        f"{MANIFEST} is malformed (dtype 'float128' is not one of bfloat16, bool, float16, "
        "float32, float64, int16, int32, int64, int8, uint16, uint32, uint64, uint8); "
        f"{MAKE_AGAIN}",
    ),
    "input-shape-not-a-list": (
        _manifest_edit(lambda m: m["inputs"][0].update(shape="1x3")),
        f"{MANIFEST} is malformed (shape '1x3' is not a list of sizes and names); {MAKE_AGAIN}",
    ),
    "byte-count-infinite": (
        lambda p: p.write_text(
            p.read_text().replace('"frozen_bytes": 864', '"frozen_bytes": 1e400')
        ),
        f"{MANIFEST} is malformed (cannot convert float infinity to integer); {MAKE_AGAIN}",
    ),
    "provenance-dtype-bogus": (
        _manifest_edit(lambda m: m["provenance"]["conv1.weight"].update(dtype="float128")),
        f"{MANIFEST}: the 'onnxfix.fixed_kernels' record of 'conv1.weight' has dtype "
        "'float128', not a numeric dtype name such as 'float32'; re-run set-kernel on the "
        "original model",
    ),
    "provenance-shape-2^40": (
        _manifest_edit(lambda m: m["provenance"]["conv1.weight"].update(shape=[1 << 40])),
        f"{MANIFEST}: the 'onnxfix.fixed_kernels' record of 'conv1.weight' has shape "
        "[1099511627776], not a list of sizes; re-run set-kernel on the original model",
    ),
    "provenance-shape-2^40-elements": (
        _manifest_edit(lambda m: m["provenance"]["conv1.weight"].update(shape=[1 << 20] * 2)),
        f"{MANIFEST}: the 'onnxfix.fixed_kernels' record of 'conv1.weight' has shape "
        "[1048576, 1048576], larger than any tensor (2^40 elements, 32 axes); re-run set-kernel "
        "on the original model",
    ),
}


@pytest.mark.parametrize("command", list(READERS))
@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_a_damaged_manifest(run, here, artifacts, case, command):
    art = _place_for_readers(here, artifacts)
    tamper, message = MANIFEST_CASES[case]
    tamper(art / "onnxfix.json")
    watch = here.watch()
    refused(run(*READERS[command]("models/art")), message, watch)


def _checkpoint_provenance(edit):
    def tamper(path: Path) -> None:
        stored = read_checkpoint(path)
        model = onnx.load(str(path.parent / "inference_model.onnx"))
        values = {t.name: t for t in model.graph.initializer}
        manifest = json.loads((path.parent / "onnxfix.json").read_text())
        properties = dict(stored.properties)
        record = json.loads(properties["onnxfix.fixed_kernels"])
        edit(record["conv1.weight"])
        properties["onnxfix.fixed_kernels"] = json.dumps(record)
        write_checkpoint(
            path,
            [values[n] for n in manifest["trainable"]],
            [values[n] for n in manifest["frozen"]],
            properties=properties,
        )

    return tamper


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (
            lambda r: r.update(dtype="object"),
            "has dtype 'object', not a numeric dtype name such as 'float32'",
        ),
        (lambda r: r.update(shape=[1 << 40]), "has shape [1099511627776], not a list of sizes"),
        (
            lambda r: r.update(shape=[1 << 39, 1 << 39]),
            "has shape [549755813888, 549755813888], larger than any tensor (2^40 elements, 32 axes)",
        ),
    ],
    ids=["dtype", "shape-2^40", "shape-2^78-elements"],
)
def test_bogus_provenance_in_the_checkpoint(run, here, artifacts, edit, what):
    art = _place_for_readers(here, artifacts)
    _checkpoint_provenance(edit)(art / "checkpoint")
    watch = here.watch()
    refused(
        run("verify", "models/art/checkpoint"),
        f"models/art/checkpoint: the 'onnxfix.fixed_kernels' record of 'conv1.weight' {what}; "
        "re-run set-kernel on the original model",
        watch,
    )


@pytest.mark.parametrize("command", ["verify", "set-kernel", "inspect-trainable"])
def test_bogus_provenance_in_a_model(run, here, fixed, command):
    model = onnx.load_from_string(fixed)
    for prop in model.metadata_props:
        if prop.key == "onnxfix.fixed_kernels":
            record = json.loads(prop.value)
            record["conv1.weight"]["shape"] = [1 << 30, 1 << 30]
            prop.value = json.dumps(record)
    _save(model, here.models / "m.onnx")
    args = {
        "verify": ("verify", "models/m.onnx"),
        "set-kernel": (*SET_KERNEL[:1], "models/m.onnx", *SET_KERNEL[1:], "out/f.onnx"),
        "inspect-trainable": ("inspect", "models/m.onnx", "--trainable"),
    }[command]
    watch = here.watch()
    refused(
        run(*args),
        "models/m.onnx: the 'onnxfix.fixed_kernels' record of 'conv1.weight' has shape "
        "[1073741824, 1073741824], larger than any tensor (2^40 elements, 32 axes); re-run "
        "set-kernel on the original model",
        watch,
    )


# ------------------------------------------------------------------ onnx.checker messages


def _broken(kind: str) -> onnx.ModelProto:
    model = simple_cnn()
    graph = model.graph
    if kind == "input-of-no-node":  # the checker's message runs over three lines
        graph.node[2].input.append("extra")
    elif kind == "unknown-op":  # two lines and a blank one
        graph.node[1].op_type = "Reluu"
    elif kind == "domain-not-imported":  # shape inference fails, even not strict
        graph.node.append(helper.make_node("Softmax", ["y"], ["p"], name="softmax"))
        graph.output[0].name = "p"
        graph.node[1].domain = "custom.x"
    elif kind == "opset-too-new":  # ONNX Runtime's gradient builder refuses it
        model.opset_import[0].version = 999
    return model


FIX = (
    "Fix the model or export it again (onnx.checker.check_model(model, full_check=True) shows "
    "the problem)"
)
CHECKER_CASES = {
    "input-of-no-node": (
        "mse",
        "the model fails onnx.checker while building the gradient graph: Nodes in a graph must "
        "be topologically sorted, however input 'extra' of node: name: conv2 OpType: Conv is "
        f"not output of any previous nodes. {FIX}",
    ),
    "unknown-op": (
        "mse",
        "the model fails onnx.checker while building the gradient graph: No Op registered for "
        f"Reluu with domain_version of 17 (Bad node spec for node. Name: relu1 OpType: Reluu). {FIX}",
    ),
    "domain-not-imported": (
        "cross-entropy",
        "onnx shape inference fails on the model, so the loss cannot read 'y': "
        "[TypeInferenceError] Cannot infer type and shape for node name relu1. No opset import "
        f"for domain custom.x optype Relu. {FIX}",
    ),
}


@pytest.mark.parametrize("case", list(CHECKER_CASES))
def test_make_artifacts_on_a_model_the_checker_refuses(run, here, case):
    _save(_broken(case), here.models / "m.onnx")
    loss, message = CHECKER_CASES[case]
    watch = here.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "out/a", "--loss", loss)
    refused(result, message, watch)


def test_inspect_trainable_on_a_model_shape_inference_fails_on(run, here):
    _save(_broken("domain-not-imported"), here.models / "m.onnx")
    watch = here.watch()
    result = run("inspect", "models/m.onnx", "--trainable", "--loss", "cross-entropy")
    refused(result, CHECKER_CASES["domain-not-imported"][1], watch)


def test_make_artifacts_on_a_model_onnxruntime_cannot_differentiate(run, here):
    _save(_broken("opset-too-new"), here.models / "m.onnx")
    watch = here.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "out/a")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(
        "Error: onnxruntime cannot build the gradient graph of the model: Failed to load model "
        "with error: "
    )
    assert result.stderr.endswith(
        "... Check that the model loads in onnxruntime.InferenceSession; if it does, please "
        "report it\n"
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    unchanged(watch)


def test_set_kernel_checker_message_is_one_line(run, here):
    _save(_broken("input-of-no-node"), here.models / "m.onnx")
    watch = here.watch()
    result = run(*SET_KERNEL[:1], "models/m.onnx", *SET_KERNEL[1:], "out/f.onnx")
    refused(
        result,
        "the result fails onnx.checker, so it was not written: Nodes in a graph must be "
        "topologically sorted, however input 'extra' of node: name: conv2 OpType: Conv is not "
        "output of any previous nodes",
        watch,
    )


# ------------------------------------------------------------------------- kernel specs


def _set(sb: Sandbox, spec: str, *extra: str) -> tuple:
    return (
        SET_KERNEL[0],
        _model_plain(sb),
        "--layer",
        "conv1",
        "--kernel",
        spec,
        *extra,
        "-o",
        "out/f.onnx",
    )


def _model_plain(sb: Sandbox) -> str:
    if not (sb.models / "cnn.onnx").exists():
        save(simple_cnn(), sb.models / "cnn.onnx")
    return "models/cnn.onnx"


LITERAL_HINT = "write it like '[[-1,0,1],[-2,0,2],[-1,0,1]]'"
DEEP = "[" * 5000 + "1" + "]" * 5000
BIG = "[1" + "0" * 400 + "]"
HUGE = "[1" + "0" * 5000 + "]"
LITERAL_CASES = {
    "nested-5000-deep": (
        DEEP,
        f"kernel literal '{DEEP[:40]}...{DEEP[-12:]}' is nested more than 5 deep; a kernel has "
        "at most 5 axes, written like '[[-1,0,1],[-2,0,2],[-1,0,1]]'",
    ),
    "nested-6-deep": (
        "[[[[[[1]]]]]]",
        "kernel literal '[[[[[[1]]]]]]' is nested more than 5 deep; a kernel has at most 5 "
        "axes, written like '[[-1,0,1],[-2,0,2],[-1,0,1]]'",
    ),
    "10^400": (
        BIG,
        f"kernel literal '{BIG[:40]}...{BIG[-12:]}' holds a number too large for float64 "
        "(about 1.8e308 at most); kernels must be finite",
    ),
    "5000-digits": (
        HUGE,
        f"kernel literal '{HUGE[:40]}...{HUGE[-12:]}' holds a number too large for float64 "
        "(about 1.8e308 at most); kernels must be finite",
    ),
    "1e400": (
        "[[1e400,0,0],[0,0,0],[0,0,0]]",
        "kernel literal '[[1e400,0,0],[0,0,0],[0,0,0]]' holds a number too large for float64 "
        "(about 1.8e308 at most); kernels must be finite",
    ),
    "true": (
        "[true]",
        "kernel literal '[true]' holds something other than numbers (true, null, text or an "
        "object); write numbers only, like '[[-1,0,1],[-2,0,2],[-1,0,1]]'",
    ),
    "null": (
        "[[null,0,0],[0,0,0],[0,0,0]]",
        "kernel literal '[[null,0,0],[0,0,0],[0,0,0]]' holds something other than numbers "
        "(true, null, text or an object); write numbers only, like '[[-1,0,1],[-2,0,2],[-1,0,1]]'",
    ),
    "NaN": ("[NaN]", f"kernel literal '[NaN]' is not a list of numbers; {LITERAL_HINT}"),
    "unclosed": ("[1,2", f"kernel literal '[1,2' is not a list of numbers; {LITERAL_HINT}"),
}


@pytest.mark.parametrize("case", list(LITERAL_CASES))
def test_a_hostile_literal(run, here, case):
    spec, message = LITERAL_CASES[case]
    args = _set(here, spec)
    watch = here.watch()
    refused(run(*args), message, watch)


FILTER_CASES = {
    "gaussian:sigma=1e-300": (
        "gaussian's sigma must be 0 or at least 0.001 (narrower is a single 1: use identity), "
        "got 1e-300 in 'gaussian:sigma=1e-300'."
    ),
    "gaussian:sigma_y=1e-300": (
        "gaussian's sigma_y must be 0 or at least 0.001 (narrower is a single 1: use identity), "
        "got 1e-300 in 'gaussian:sigma_y=1e-300'."
    ),
    "gabor:sigma=1e-300": (
        "gabor's sigma must be at least 0.001 (narrower is a single 1: use identity), got "
        "1e-300 in 'gabor:sigma=1e-300'."
    ),
    "gabor:gamma=1e300": (
        "gabor's envelope height sigma/gamma is 2e-300 (sigma=2, gamma=1e+300); it must be at "
        "least 0.001: lower gamma or raise sigma."
    ),
    "gabor:lambd=1e-320": "gabor's lambd must be at least 0.001, got 1e-320 in 'gabor:lambd=1e-320'.",
    "log:sigma=1e-300": (
        "log's sigma must be at least 0.001 (narrower is a single 1: use identity), got 1e-300 "
        "in 'log:sigma=1e-300'."
    ),
    "log:sigma=1e300": (
        "log's sigma must be at most 1e+06 (wider is 0 everywhere), got 1e300 in 'log:sigma=1e300'."
    ),
}


@pytest.mark.parametrize("spec", list(FILTER_CASES))
def test_a_degenerate_filter_parameter(run, here, spec):
    args = _set(here, spec)
    watch = here.watch()
    refused(run(*args), FILTER_CASES[spec], watch)


def _npy_header(f, shape: tuple[int, ...], descr: str = "<f4", version=(1, 0)) -> None:
    from numpy.lib import format as npformat

    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        npformat.write_array_header_1_0(f, header)
    else:
        npformat.write_array_header_2_0(f, header)


def _huge_npy(path: Path) -> None:
    with open(path, "wb") as f:
        _npy_header(f, (1 << 40,))
        f.write(b"\0" * 64)


def _huge_npz(path: Path, key: str = "conv1", compressed: bool = False) -> None:
    member = io.BytesIO()
    _npy_header(member, (1 << 40, 3, 3))
    member.write(b"\0" * 100)
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as z:
        z.writestr(f"{key}.npy", member.getvalue())


def _long_header(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 31) + b"{}")


def _bad_header(path: Path) -> None:
    np.save(path, np.zeros(3))
    data = path.read_bytes().replace(b"(3,)", b"(3,,")
    path.write_bytes(data)


def _lying_zip_member(path: Path) -> None:
    """A stored member whose central directory entry claims 4 GB."""
    np.savez(path, conv1=np.zeros((3, 3)))
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")  # its uncompressed size is at offset 24
    struct.pack_into("<I", data, central + 24, 0xFFFFFFF0)
    path.write_bytes(bytes(data))


TOO_LARGE = (
    "is truncated or has a damaged header: the header says shape (1099511627776,) of float32 "
    "(4398046511104 bytes), but only 64 bytes follow it; save it again with numpy"
)
NPZ_TOO_LARGE = (
    "is truncated or has a damaged header in array 'conv1': the header says shape "
    "(1099511627776, 3, 3) of float32 (39582418599936 bytes), but only 100 bytes follow it; "
    "save it again with numpy"
)
KERNEL_FILE_CASES = {
    # case: (file name, how to make it, spec, message)
    "npy-claims-2^40": (
        "k.npy",
        _huge_npy,
        "models/k.npy",
        f"kernel file 'models/k.npy' {TOO_LARGE}",
    ),
    "npz-member-claims-2^40": (
        "k.npz",
        _huge_npz,
        "models/k.npz:conv1",
        f"kernel file 'models/k.npz' {NPZ_TOO_LARGE}",
    ),
    "npz-compressed-member-claims-2^40": (
        "k.npz",
        functools.partial(_huge_npz, compressed=True),
        "models/k.npz:conv1",
        f"kernel file 'models/k.npz' {NPZ_TOO_LARGE}",
    ),
    "header-length-2^31": (
        "k.npy",
        _long_header,
        "models/k.npy",
        "kernel file 'models/k.npy' has a damaged .npy header (the header says it is "
        "2147483648 bytes long); save it again with numpy",
    ),
    "header-unparsable": (
        "k.npy",
        _bad_header,
        "models/k.npy",
        "kernel file 'models/k.npy' has a damaged .npy header (('EOF in multi-line statement', "
        "(2, 0))); save it again with numpy",
    ),
    "empty-npy": (
        "k.npy",
        lambda p: p.write_bytes(b""),
        "models/k.npy",
        "kernel file 'models/k.npy' is empty; save the arrays with numpy.save or numpy.savez",
    ),
    "truncated-npz": (
        "k.npz",
        lambda p: (np.savez(p, conv1=np.ones((3, 3))), p.write_bytes(p.read_bytes()[:100])),
        "models/k.npz:conv1",
        "kernel file 'models/k.npz' is a damaged or truncated .npz archive (File is not a zip "
        "file); save it again with numpy.savez",
    ),
    "zip-member-size-lies": (
        "k.npz",
        _lying_zip_member,
        "models/k.npz:conv1",
        "kernel file 'models/k.npz' is a damaged .npz archive: array 'conv1' claims 4294967280 "
        "bytes from 200 stored; save it again with numpy.savez",
    ),
}


@pytest.mark.parametrize("case", list(KERNEL_FILE_CASES))
def test_a_kernel_file_whose_header_lies(run, here, case):
    name, make, spec, message = KERNEL_FILE_CASES[case]
    make(here.models / name)
    args = _set(here, spec)
    watch = here.watch()
    refused(run(*args), message, watch)


@pytest.mark.parametrize("case", ["npy", "npy-claims-2^40", "npz-member-claims-2^40", "empty"])
def test_kernels_given_something_else_than_an_npz_bank(run, here, case):
    path = here.models / ("k.npz" if case.startswith("npz") else "k.npy")
    if case == "npy":
        np.save(path, np.ones((3, 3)))
    elif case == "npy-claims-2^40":
        _huge_npy(path)
    elif case == "npz-member-claims-2^40":
        _huge_npz(path)
    else:
        path.write_bytes(b"")
    name = f"models/{path.name}"
    args = (SET_KERNEL[0], _model_plain(here), "--kernels", name, "-o", "out/f.onnx")
    message = {
        "npy": (
            f"--kernels '{name}' is a single array (.npy); it takes an .npz whose keys are layer "
            "selectors (numpy.savez(path, conv1=k1, conv2=k2)), or give the one kernel with "
            "--kernel"
        ),
        "npy-claims-2^40": (
            f"--kernels '{name}' is a single array (.npy); it takes an .npz whose keys are layer "
            "selectors (numpy.savez(path, conv1=k1, conv2=k2)), or give the one kernel with "
            "--kernel"
        ),
        "npz-member-claims-2^40": f"kernel file '{name}' {NPZ_TOO_LARGE}",
        "empty": f"--kernels '{name}' is empty; save the arrays with numpy.save or numpy.savez",
    }[case]
    watch = here.watch()
    refused(run(*args), message, watch)


# ------------------------------------------------------------------------ training data


def _npz_members(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _data_huge_header(path: Path) -> None:
    member = io.BytesIO()
    _npy_header(member, (1 << 40, 3, 16, 16))
    member.write(b"\0" * 100)
    _npz_members(
        path, {"x.npy": member.getvalue(), "labels.npy": _npy_bytes(np.zeros(4, np.int64))}
    )


def _data_long_header(path: Path) -> None:
    long = b"\x93NUMPY\x01\x00" + struct.pack("<H", 60000) + b" " * 60000
    _npz_members(path, {"x.npy": long, "labels.npy": _npy_bytes(np.zeros(4, np.int64))})


DATA_CASES = {
    # case: (make the file at the path, message after the file's name)
    "no-samples": (
        lambda p: np.savez(p, x=np.zeros((0, 3, 16, 16), np.float32), labels=np.zeros(0, np.int64)),
        "'{p}' holds no samples ('x' has shape (0, 3, 16, 16)); training needs at least one",
    ),
    "0-d-arrays": (
        lambda p: np.savez(p, x=np.float32(1), labels=np.int64(1)),
        "'{p}': 'x' is a single value (shape ()); it needs one entry per sample, the samples "
        "along its first axis",
    ),
    "0-d-target": (
        lambda p: np.savez(p, x=np.zeros((4, 3, 16, 16), np.float32), labels=np.int64(1)),
        "'{p}': 'labels' is a single value (shape ()); it needs one entry per sample, the "
        "samples along its first axis",
    ),
    "truncated": (
        lambda p: (
            np.savez(p, x=np.zeros((4, 3, 16, 16), np.float32), labels=np.zeros(4, np.int64)),
            p.write_bytes(p.read_bytes()[:-30]),
        ),
        "data file '{p}' is a damaged or truncated .npz archive (File is not a zip file); save "
        "it again with numpy.savez",
    ),
    "empty": (
        lambda p: p.write_bytes(b""),
        "data file '{p}' is empty; save the arrays with numpy.save or numpy.savez",
    ),
    "header-claims-2^40-samples": (
        _data_huge_header,
        "data file '{p}' is truncated or has a damaged header in array 'x': the header says "
        "shape (1099511627776, 3, 16, 16) of float32 (3377699720527872 bytes), but only 100 "
        "bytes follow it; save it again with numpy",
    ),
    "header-60000-bytes": (
        _data_long_header,
        "data file '{p}' has a damaged .npy header in array 'x' (the header says it is 60000 "
        "bytes long); save it again with numpy",
    ),
    "pickled": (
        lambda p: np.savez(p, x=np.array([{}] * 4, dtype=object), labels=np.zeros(4, np.int64)),
        "'{p}' holds pickled Python objects in array 'x', which onnxfix never loads; save plain "
        "numeric arrays with numpy.savez",
    ),
    "not-an-array-file": (
        lambda p: p.write_bytes(b"x,labels\n1,2\n"),
        "data file '{p}' is neither an .npy nor an .npz file; save the arrays with numpy.save "
        "or numpy.savez",
    ),
}


@pytest.mark.parametrize("which", ["--data", "--val"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_broken_training_data(run, here, artifacts, case, which):
    art = _art(here, artifacts)
    good = _data(here, "good.npz")
    make, message = DATA_CASES[case]
    make(here.root / "bad.npz")
    files = {"--data": good, "--val": good, which: "bad.npz"}
    watch = here.watch()
    result = run(
        "train", art, *[x for k, v in files.items() for x in (k, v)], "--checkpoint-out", "out/ck"
    )
    refused(result, message.format(p="bad.npz"), watch)


@pytest.mark.parametrize("seed", ["-1", "-99999999999999999999"])
def test_a_negative_seed(run, here, artifacts, seed):
    art = _art(here, artifacts)
    data = _data(here)
    watch = here.watch()
    result = run("train", art, "--data", data, "--seed", seed, "--checkpoint-out", "out/ck")
    refused(result, f"--seed {seed} is not a seed: give a whole number, 0 or more", watch)


def _dynamic(sb: Sandbox) -> str:
    model = simple_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "batch", "h", "w"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    save(model, sb.models / "dyn.onnx")
    return "models/dyn.onnx"


INT64_MAX = (1 << 63) - 1
SHAPE_CASES = {
    "negative": ("x=-1,3,16,16", "size -1 is not a whole number from 1 to {max}"),
    "zero": ("x=0,3,16,16", "size 0 is not a whole number from 1 to {max}"),
    "over-int64": (
        f"x=1,3,16,{INT64_MAX + 1}",
        f"size {INT64_MAX + 1} is not a whole number from 1 to {{max}}",
    ),
    "2^70": (f"x=1,3,16,{1 << 70}", f"size {1 << 70} is not a whole number from 1 to {{max}}"),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_input_shape_values_out_of_range(run, here, case):
    """Sizes are the library's to check (exit 1), as for a caller of make_artifacts."""
    model = _dynamic(here)
    value, why = SHAPE_CASES[case]
    watch = here.watch()
    result = run("make-artifacts", model, "-o", "out/a", "--input-shape", value)
    refused(
        result,
        f"--input-shape {value}: {why.format(max=INT64_MAX)}; give the real size of every "
        "axis, batch included",
        watch,
    )


def test_input_shape_of_too_many_values(run, here):
    model = _dynamic(here)
    value = f"x=1,3,16,{INT64_MAX}"
    watch = here.watch()
    result = run("make-artifacts", model, "-o", "out/a", "--input-shape", value)
    refused(
        result,
        f"--input-shape {value} holds {48 * INT64_MAX} values, more than one training batch "
        "can (2^32); give the real size of every axis, batch included",
        watch,
    )


@pytest.mark.parametrize(
    "value", ["x=1,,3", "x=", "=1,2", "x=1,3,16," + "9" * 5000, "x=a,b"], ids=lambda v: v[:12]
)
def test_input_shape_that_is_not_name_equals_sizes_is_a_usage_error(run, here, value):
    """The form of the option is click's to check: exit 2 with its usage message, like any
    malformed option (README, Errors)."""
    model = _dynamic(here)
    watch = here.watch()
    result = run("make-artifacts", model, "-o", "out/a", "--input-shape", value)
    assert result.exit_code == 2
    assert result.stderr.endswith(
        f"Error: Invalid value for --input-shape: {value!r} is not NAME=D0,D1,... (e.g. "
        "x=1,3,224,224)\n"
    )
    unchanged(watch)


# ----------------------------------------------------------------------- the Python API


@pytest.fixture
def cnn(tmp_path) -> Path:
    return save(simple_cnn(), tmp_path / "cnn.onnx")


def test_api_a_kernel_array_in_memory(tmp_path, cnn):
    """set_kernel(kernel=<numpy array>) raised AttributeError ('strip')."""
    kernel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    result = onnxfix.set_kernel(cnn, tmp_path / "a.onnx", layers=["conv1"], kernel=kernel)
    onnxfix.set_kernel(cnn, tmp_path / "b.onnx", layers=["conv1"], kernel="sobel-x")
    a = {t.name: t for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    b = {t.name: t for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    assert a["conv1.weight"].raw_data == b["conv1.weight"].raw_data
    assert result.fixed[0].kernel == "<array of shape (3, 3)>"
    assert onnxfix.verify(tmp_path / "a.onnx").ok


def test_api_a_bias_array_in_memory(tmp_path, cnn):
    bias = np.arange(8, dtype=np.float32)
    result = onnxfix.set_kernel(
        cnn, tmp_path / "a.onnx", layers="conv1", kernel=np.ones((8, 3, 3)), bias=bias
    )
    weights = {t.name: t for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    assert onnx.numpy_helper.to_array(weights["conv1.bias"]).tolist() == bias.tolist()
    assert [(f.tensor, f.kernel) for f in result.fixed] == [
        ("conv1.weight", "<array of shape (8, 3, 3)>"),
        ("conv1.bias", "--bias <array of shape (8,)>"),
    ]


def test_api_layers_as_one_string_is_one_selector(tmp_path, cnn):
    """layers="conv1" used to become the selectors c, o, n, v, 1."""
    result = onnxfix.set_kernel(cnn, tmp_path / "a.onnx", layers="conv1", kernel="sobel-x")
    assert [f.layer for f in result.fixed] == ["conv1"]


def test_api_freeze_as_one_string_is_one_pattern(tmp_path, cnn):
    """freeze="conv2*" would have been the patterns c, o, n, v, 2 and * (every parameter)."""
    result = onnxfix.make_artifacts(cnn, tmp_path / "art", freeze="conv2*", self_test=False)
    assert result.manifest.frozen == ("conv2.weight", "conv2.bias")


API_CASES = {
    "a-number": (
        dict(kernel=5),
        KernelSpecError,
        "kernel must be a spec (text), a path or a numpy array, not int",
    ),
    "a-0-d-array": (
        dict(kernel=np.array(3.0)),
        KernelSpecError,
        "kernel <array of shape ()> is a single number; give an array with the kernel's axes",
    ),
    "an-object-array": (
        dict(kernel=np.array([{}, {}], dtype=object)),
        KernelSpecError,
        "kernel <array of shape (2,)> holds object values; a kernel must be a numeric (integer "
        "or float) array",
    ),
    "a-text-array": (
        dict(kernel=np.array(["a", "b"])),
        KernelSpecError,
        "kernel <array of shape (2,)> holds <U1 values; a kernel must be a numeric (integer or "
        "float) array",
    ),
    "an-infinite-array": (
        dict(kernel=np.full((3, 3), np.inf)),
        KernelShapeError,
        "kernel '<array of shape (3, 3)>' for layer 'conv1' holds inf at index (0, 0, 0, 0); "
        "kernels must be finite",
    ),
    "a-bias-of-the-wrong-shape": (
        dict(kernel="sobel-x", bias=np.ones((3, 3))),
        KernelShapeError,
        "layer 'conv1' has 8 output channels, so its bias must have shape (8,); "
        "'<array of shape (3, 3)>' holds (3, 3)",
    ),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_a_kernel_that_is_no_array_of_numbers(tmp_path, cnn, case):
    kwargs, error, message = API_CASES[case]
    before = cnn.read_bytes()
    with pytest.raises(error) as caught:
        onnxfix.set_kernel(cnn, tmp_path / "out.onnx", layers="conv1", **kwargs)
    assert str(caught.value) == message
    assert cnn.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]


def test_api_train_with_a_negative_seed(tmp_path, artifacts):
    art = shutil.copytree(artifacts, tmp_path / "art")
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 3, 16, 16), np.float32), labels=np.zeros(2, np.int64)
    )
    with pytest.raises(TrainingDataError) as caught:
        onnxfix.train(art, tmp_path / "d.npz", seed=-1)
    assert str(caught.value) == "seed -1 is not a seed: give a whole number, 0 or more"


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            {"x": [-1, 3, 16, 16]},
            f"input_shapes x=-1,3,16,16: size -1 is not a whole number from 1 to {INT64_MAX}; "
            "give the real size of every axis, batch included",
        ),
        (
            {"x": [1.5, 3, 16, 16]},
            f"input_shapes x=1.5,3,16,16: size 1.5 is not a whole number from 1 to {INT64_MAX}; "
            "give the real size of every axis, batch included",
        ),
        (
            {"x": []},
            "input_shapes x= is not a list of sizes; give one size per axis, e.g. x: [1, 3, 224, 224]",
        ),
    ],
    ids=["negative", "float", "empty"],
)
def test_api_input_shapes_out_of_range(tmp_path, shapes, message):
    model = save(simple_cnn(), tmp_path / "m.onnx")
    with pytest.raises(ArtifactsError) as caught:
        onnxfix.make_artifacts(model, tmp_path / "art", input_shapes=shapes, self_test=False)
    assert str(caught.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_api_a_provenance_error_is_a_provenance_error(tmp_path, fixed):
    model = onnx.load_from_string(fixed)
    for prop in model.metadata_props:
        if prop.key == "onnxfix.fixed_kernels":
            prop.value = json.dumps({"conv1.weight": {"sha256": "0" * 64, "dtype": "complex64"}})
    _save(model, tmp_path / "m.onnx")
    with pytest.raises(ProvenanceError) as caught:
        onnxfix.verify(tmp_path / "m.onnx")
    assert str(caught.value) == (
        f"{tmp_path / 'm.onnx'}: the 'onnxfix.fixed_kernels' record of 'conv1.weight' has dtype "
        "'complex64', not a numeric dtype name such as 'float32'; re-run set-kernel on the "
        "original model"
    )

"""Data loss: no command deletes or overwrites a file it reads, whatever the path spelling; an
output is a regular file; ``--force`` replaces only onnxfix's own artifacts; a kill at any
point leaves the old model or the new one, consistent; leftovers of killed runs are removed;
two writers of one output end consistent; the build child dies with its parent.

Refusals run in-process (``run``) and assert the exit code, the exact message and an unchanged
sandbox. Kills run the CLI in a child process that patches one step of onnxfix to SIGKILL
itself there, then check what the next command finds: the model as it was, or as the killed
run meant it, with its provenance record matching its bytes (``verify`` passes).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from onnxfix.commands.make_artifacts import make_artifacts
from onnxfix.commands.set_kernel import set_kernel
from onnxfix.errors import ModelFileError
from onnxfix.modelio.journal import journal_path
from tests.support.cli import onnxfix
from tests.support.files import sha256
from tests.support.hostile import Sandbox, external_model, refused, unchanged

NEVER = "onnxfix never overwrites a file it reads: choose another"
KERNEL = ("--layer", "conv1", "--kernel")
ARTIFACTS = (
    "checkpoint",
    "eval_model.onnx",
    "inference_model.onnx",
    "inference_model.onnx.data",
    "onnxfix.json",
    "optimizer_model.onnx",
    "training_model.onnx",
)
VERIFIED = "ok       conv1.weight (layer conv1)\nall 1 fixed kernels match their record\n"


def shown(path: str) -> str:
    """A path as the messages show it (pathlib's spelling: no ``./``, no doubled ``/``)."""
    return str(Path(path))


def same(flag: str, target: str, what: str, path: str) -> str:
    return f"{flag} {shown(target)!r} is the same file as {what} {shown(path)!r}; {NEVER} {flag}"


def same_data(flag: str, given: str, target: str, what: str, path: str) -> str:
    return (
        f"{flag} {given!r} would write its data file {target!r}, which is the same file as "
        f"{what} {path!r}; {NEVER} {flag}"
    )


def holds(out: str, what: str, path: str, alias: str | None = None) -> str:
    shown = f" (as {alias!r})" if alias else ""
    return (
        f"-o {out!r} holds {what} {path!r}{shown}, and the folder is replaced as a whole: "
        "choose a new or empty folder for -o"
    )


def not_artifacts(out: str, why: str) -> str:
    return (
        f"{out!r} is not a folder of onnxfix artifacts: {why}. -o must be a new or empty "
        "folder, or onnxfix artifacts to replace with --force"
    )


def device(what: str, path: str, kind: str, folder: bool = False) -> str:
    noun = "folder" if folder else "file"
    return (
        f"{what} {path!r} is {kind}, not a {noun}; onnxfix writes a new one and renames it into "
        f"place, which would replace it. Give the path of a {noun}"
    )


MODEL = "the input model"
MODEL_DATA = "the input model's external data file"
ART_FILE = "the artifacts' file"


# --------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """m.onnx (conv1.weight fixed with sobel-x, kept in m.onnx.data), artifacts of it (no
    self-test: the build is what matters here), and training and validation data."""
    folder = tmp_path_factory.mktemp("built")
    external_model(folder, name="raw.onnx", location="raw.onnx.data")
    set_kernel(folder / "raw.onnx", folder / "m.onnx", layers=["conv1"], kernel="sobel-x")
    make_artifacts(folder / "m.onnx", folder / "art", self_test=False)
    rng = np.random.default_rng(0)
    for name in ("data.npz", "val.npz"):
        np.savez(
            folder / name,
            x=rng.normal(size=(4, 3, 16, 16)).astype(np.float32),
            target=rng.normal(size=(4, 10)).astype(np.float32),
        )
    return folder


@pytest.fixture(autouse=True)
def _in_sandbox(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox.root)


@pytest.fixture
def sb(sandbox: Sandbox, built: Path) -> Sandbox:
    """The sandbox with models/m.onnx and models/m.onnx.data, art/, data.npz and val.npz, and
    kernel and bias files: k.npy, bank.npz (key k), kernels.npz (key conv1), b.npy."""
    for name in ("m.onnx", "m.onnx.data"):
        shutil.copy(built / name, sandbox.models / name)
    shutil.copytree(built / "art", sandbox.root / "art")
    for name in ("data.npz", "val.npz"):
        shutil.copy(built / name, sandbox.root / name)
    np.save(sandbox.root / "k.npy", np.ones((3, 3), np.float32))
    np.savez(sandbox.root / "bank.npz", k=np.ones((3, 3), np.float32))
    np.savez(sandbox.root / "kernels.npz", conv1=np.ones((3, 3), np.float32))
    np.save(sandbox.root / "b.npy", np.zeros(8, np.float32))
    return sandbox


def fifo(path: Path) -> Path:
    os.mkfifo(path)  # never opened, by onnxfix or by this test
    return path


# ----------------------------------------------------------------- set-kernel -o: inputs


@pytest.mark.parametrize(
    "spelling",
    ["models/m.onnx", "./models/m.onnx", "models/../models/m.onnx", "link"],
)
def test_set_kernel_output_is_the_model(sb, run, spelling):
    if spelling == "link":
        spelling = "out/link.onnx"
        os.symlink("../models/m.onnx", sb.out / "link.onnx")
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", spelling)
    message = (
        f"output {shown(spelling)!r} is the input model; onnxfix never changes its input unless you add "
        "--in-place"
    )
    refused(result, message, watch)


def test_set_kernel_output_is_a_hard_link_to_the_model(sb, run):
    os.link(sb.models / "m.onnx", sb.out / "m.onnx")
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/m.onnx")
    refused(result, same("-o", "out/m.onnx", MODEL, "models/m.onnx"), watch)


@pytest.mark.parametrize(
    "spelling, link",
    [
        ("models/m.onnx.data", None),
        ("./models/../models/m.onnx.data", None),
        ("out/w.bin", "symlink"),
        ("out/w.bin", "hard"),
    ],
)
def test_set_kernel_output_is_the_models_data(sb, run, spelling, link):
    if link == "symlink":
        os.symlink("../models/m.onnx.data", sb.out / "w.bin")
    elif link == "hard":
        os.link(sb.models / "m.onnx.data", sb.out / "w.bin")
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", spelling)
    refused(result, same("-o", spelling, MODEL_DATA, "models/m.onnx.data"), watch)


def test_set_kernel_output_data_file_is_the_inputs_data(sandbox, run):
    """The input keeps its weights in out.onnx.data: -o out.onnx would replace them."""
    external_model(sandbox.models, name="in.onnx", location="out.onnx.data")
    watch = sandbox.watch()
    result = run("set-kernel", "models/in.onnx", *KERNEL, "box", "-o", "models/out.onnx")
    message = same_data(
        "-o", "models/out.onnx", "models/out.onnx.data", MODEL_DATA, "models/out.onnx.data"
    )
    refused(result, message, watch)


@pytest.mark.parametrize("link", ["symlink", "hard"])
def test_set_kernel_output_data_file_links_to_the_inputs_data(sb, run, link):
    target = sb.out / "x.onnx.data"
    if link == "symlink":
        os.symlink("../models/m.onnx.data", target)
    else:
        os.link(sb.models / "m.onnx.data", target)
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/x.onnx")
    message = same_data("-o", "out/x.onnx", "out/x.onnx.data", MODEL_DATA, "models/m.onnx.data")
    refused(result, message, watch)


@pytest.mark.parametrize(
    "args, output, what, path",
    [
        (("--kernel", "k.npy"), "k.npy", "the --kernel file", "k.npy"),
        (("--kernel", "./k.npy"), "./k.npy", "the --kernel file", "k.npy"),
        (("--kernel", "bank.npz:k"), "bank.npz", "the --kernel file", "bank.npz"),
        (("--kernels", "kernels.npz"), "kernels.npz", "the --kernels file", "kernels.npz"),
        (("--kernel", "box", "--bias", "b.npy"), "b.npy", "the --bias file", "b.npy"),
    ],
)
def test_set_kernel_output_is_a_kernel_file(sb, run, args, output, what, path):
    layer = () if args[0] == "--kernels" else ("--layer", "conv1")
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *layer, *args, "-o", output)
    refused(result, same("-o", output, what, path), watch)


def test_in_place_kernel_file_is_the_models_data(sb, run):
    """In place the model's data files are written by request; a kernel read from one is not
    written over."""
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "models/m.onnx.data", "--in-place")
    message = (
        "--in-place 'models/m.onnx' would write its external data file 'models/m.onnx.data', "
        f"which is the same file as the --kernel file 'models/m.onnx.data'; {NEVER} --in-place"
    )
    refused(result, message, watch)


# ------------------------------------------------------- outputs that are not regular files


def test_set_kernel_output_data_file_is_a_fifo(sb, run):
    fifo(sb.out / "f.onnx.data")
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx")
    message = (
        "-o 'out/f.onnx' would write its data file 'out/f.onnx.data', which is a FIFO (named "
        "pipe), not a regular file; move it away or choose another -o"
    )
    refused(result, message, watch)


def test_set_kernel_output_is_a_folder(sb, run):
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '-o' / '--output': File 'out' is a directory.\n"
    )
    unchanged(watch)
    with pytest.raises(
        ModelFileError, match="^output 'out' is a folder; give a file name inside it$"
    ):
        set_kernel("models/m.onnx", "out", layers=["conv1"], kernel="box")
    unchanged(watch)


def special(folder: Path, kind: str) -> Path | None:
    """``folder/null``: a character device like /dev/null (1, 3), or a FIFO; None where mknod
    is not allowed.

    The tests make their own device, never use /dev/null itself: on code with the bug, a root
    run would turn the machine's /dev/null into a regular file.
    """
    path = folder / "null"
    try:
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError):
        return None
    return path


KINDS = {"device": "a character device", "fifo": "a named pipe (FIFO)"}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    "command, what",
    [
        (("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/null"), "output"),
        (("export", "art", "-o", "out/null"), "output"),
        (("train", "art", "--data", "data.npz", "--checkpoint-out", "out/null"), "checkpoint"),
        (("make-artifacts", "models/m.onnx", "-o", "out/null", "--force"), "output folder"),
    ],
    ids=["set-kernel", "export", "train", "make-artifacts"],
)
def test_special_output_stays_what_it_is(sb, run, command, what, kind):
    """As root (CI) a rename over /dev/null would turn the device node into a file."""
    node = special(sb.out, kind)
    if node is None:
        pytest.skip("mknod is not allowed here")
    before = os.lstat(node)
    watch = sb.watch()  # records the node's type
    message = device(what, "out/null", KINDS[kind], folder=what == "output folder")
    refused(run(*command), message, watch)
    after = os.lstat(node)
    assert (stat.S_IFMT(after.st_mode), after.st_rdev) == (
        stat.S_IFMT(before.st_mode),
        before.st_rdev,
    )


# -------------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", ARTIFACTS)
def test_export_over_an_artifacts_file(sb, run, name):
    watch = sb.watch()
    result = run("export", "art", "-o", f"art/{name}")
    what = "the checkpoint" if name == "checkpoint" else ART_FILE
    refused(result, same("-o", f"art/{name}", what, f"art/{name}"), watch)


@pytest.mark.parametrize("spelling", ["./art/../art/checkpoint", "out/ckpt.onnx"])
def test_export_over_the_checkpoint_spelled_otherwise(sb, run, spelling):
    if spelling.startswith("out/"):
        os.symlink("../art/checkpoint", sb.out / "ckpt.onnx")
    watch = sb.watch()
    result = run("export", "art", "-o", spelling)
    refused(result, same("-o", spelling, "the checkpoint", "art/checkpoint"), watch)


def test_export_over_the_given_checkpoint(sb, run):
    shutil.copy(sb.root / "art" / "checkpoint", sb.out / "ckpt")
    watch = sb.watch()
    result = run("export", "art", "--checkpoint", "out/ckpt", "-o", "out/ckpt")
    refused(result, same("-o", "out/ckpt", "the checkpoint", "out/ckpt"), watch)


def test_export_data_file_over_the_inference_models_data(sb, run):
    os.link(sb.root / "art" / "inference_model.onnx.data", sb.out / "f.onnx.data")
    watch = sb.watch()
    result = run("export", "art", "-o", "out/f.onnx")
    message = same_data(
        "-o", "out/f.onnx", "out/f.onnx.data", ART_FILE, "art/inference_model.onnx.data"
    )
    refused(result, message, watch)


def test_export_beside_the_artifacts_still_works(sb, run):
    watch = sb.watch()
    result = run("export", "art", "-o", "art/finetuned.onnx")
    assert result.exit_code == 0, result.output
    unchanged(watch, allowed=["art/finetuned.onnx", "art/finetuned.onnx.data"])


# --------------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    "target, what",
    [
        ("data.npz", "the training data"),
        ("./data.npz", "the training data"),
        ("val.npz", "the validation data"),
        *[(f"art/{n}", ART_FILE) for n in ARTIFACTS if n != "checkpoint"],
    ],
)
def test_train_checkpoint_out_over_an_input(sb, run, target, what):
    watch = sb.watch()
    result = run(
        "train", "art", "--data", "data.npz", "--val", "val.npz", "--checkpoint-out", target
    )
    refused(result, same("--checkpoint-out", target, what, target), watch)


@pytest.mark.parametrize("link", ["symlink", "hard"])
def test_train_checkpoint_out_links_to_the_data(sb, run, link):
    if link == "symlink":
        os.symlink("../data.npz", sb.out / "ckpt")
    else:
        os.link(sb.root / "data.npz", sb.out / "ckpt")
    watch = sb.watch()
    result = run("train", "art", "--data", "data.npz", "--checkpoint-out", "out/ckpt")
    refused(result, same("--checkpoint-out", "out/ckpt", "the training data", "data.npz"), watch)


# ------------------------------------------------------------------------ make-artifacts


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("spelling", ["models", "./models", "models/../models", "link"])
def test_make_artifacts_into_the_models_folder(sb, run, spelling, force):
    """The issue's case: the error for a non-empty folder suggested --force, which deleted
    the model, its data and everything beside it."""
    if spelling == "link":
        spelling = "out/link"
        os.symlink("../models", sb.out / "link")
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", spelling, *(["--force"] * force))
    refused(result, holds(shown(spelling), MODEL, "models/m.onnx"), watch)


@pytest.mark.parametrize("levels", [1, 2])
def test_make_artifacts_into_a_folder_above_the_model(sb, run, levels):
    above = sb.models.parents[levels - 1]
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", above, "--force")
    refused(result, holds(str(above), MODEL, "models/m.onnx"), watch)


def test_make_artifacts_model_kept_in_the_artifacts(sb, run):
    """make-artifacts art/inference_model.onnx -o art --force would delete its own input."""
    watch = sb.watch()
    result = run("make-artifacts", "art/inference_model.onnx", "-o", "art", "--force")
    refused(result, holds("art", MODEL, "art/inference_model.onnx"), watch)


def test_make_artifacts_into_the_data_files_folder(sb, run):
    """A model whose external data lies in a subfolder: -o that subfolder holds an input."""
    (sb.models / "weights").mkdir()
    external_model(sb.models, name="s.onnx", location="weights/s.bin")
    watch = sb.watch()
    result = run("make-artifacts", "models/s.onnx", "-o", "models/weights", "--force")
    refused(result, holds("models/weights", MODEL_DATA, "models/weights/s.bin"), watch)


@pytest.mark.parametrize("link", ["symlink", "hard"])
def test_make_artifacts_folder_holding_a_link_to_the_model(sb, run, link):
    entry = sb.root / "art" / "training_model.onnx"
    entry.unlink()
    if link == "symlink":
        os.symlink("../models/m.onnx", entry)
    else:
        os.link(sb.models / "m.onnx", entry)
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "art", "--force")
    refused(result, holds("art", MODEL, "models/m.onnx", "art/training_model.onnx"), watch)


@pytest.mark.parametrize(
    "make, why",
    [
        (
            lambda art: (art / "notes.txt").write_text("mine"),
            "it holds 'notes.txt', which onnxfix does not write",
        ),
        (lambda art: (art / "runs").mkdir(), "it holds 'runs/', which onnxfix does not write"),
        (lambda art: (art / "onnxfix.json").unlink(), "its onnxfix.json is missing or unreadable"),
        (
            lambda art: (art / "onnxfix.json").write_text("{"),
            "its onnxfix.json is missing or unreadable",
        ),
        (
            lambda art: [(art / f"f{i}.txt").write_text("") for i in range(5)],
            "it holds 'f0.txt', 'f1.txt', 'f2.txt' and 2 more, which onnxfix does not write",
        ),
    ],
    ids=["file", "folder", "no-manifest", "bad-manifest", "many"],
)
@pytest.mark.parametrize("force", [False, True])
def test_make_artifacts_force_replaces_only_artifacts(sb, run, make, why, force):
    make(sb.root / "art")
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "art", *(["--force"] * force))
    refused(result, not_artifacts("art", why), watch)


def test_make_artifacts_user_folder_refused_with_force(sandbox, built, run):
    """A folder of the user's own files, none of them an input: still never deleted."""
    shutil.copy(built / "m.onnx", sandbox.models)
    shutil.copy(built / "m.onnx.data", sandbox.models)
    (sandbox.out / "thesis.txt").write_text("only copy")
    watch = sandbox.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "out", "--force")
    refused(
        result, not_artifacts("out", "it holds 'thesis.txt', which onnxfix does not write"), watch
    )


def test_make_artifacts_on_artifacts_needs_force(sb, run):
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "art")
    refused(
        result,
        "'art' is not empty; add --force to replace its contents, or choose another -o",
        watch,
    )


def test_make_artifacts_force_replaces_artifacts(sb, run):
    (sb.root / "art" / "checkpoint").write_bytes(b"trained since")
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "art", "--force", "--no-self-test")
    assert result.exit_code == 0, result.output
    assert (sb.root / "art" / "checkpoint").read_bytes() != b"trained since"
    unchanged(watch, allowed=["art"])
    assert sorted(os.listdir(sb.root)) == sorted(
        [
            "art",
            "bank.npz",
            "b.npy",
            "data.npz",
            "k.npy",
            "kernels.npz",
            "models",
            "out",
            "outside",
            "val.npz",
        ]
    )


def test_make_artifacts_empty_folder_and_new_folder(sb, run):
    (sb.out / "empty").mkdir()
    for out in ("out/empty", "out/new"):
        result = run("make-artifacts", "models/m.onnx", "-o", out, "--no-self-test")
        assert result.exit_code == 0, result.output
        assert sorted(os.listdir(out)) == sorted(ARTIFACTS)


# -------------------------------------------------------------------------- kills: tools


PRELUDE = """
import os, signal, sys, time
from pathlib import Path

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
"""
MAIN = """
from onnxfix.cli import main
sys.argv = ["onnxfix", *sys.argv[1:]]
main()
"""


def killed(patch: str, *args, env: dict[str, str] | None = None) -> None:
    """Run ``onnxfix ARGS`` in a child process that first runs ``patch`` (which arranges to
    call ``die()`` at one step) and assert it died by SIGKILL there."""
    code = PRELUDE + textwrap.dedent(patch) + MAIN
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


# The in-place patch, step by step: the journal, the data bytes, the rename, the journal's end.
KILL_AT_JOURNAL_RENAME = """
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith(".onnxfix-journal"):
        die()
    return real(src, dst, *a, **k)
os.replace = replace
"""
KILL_AFTER_JOURNAL = """
from onnxfix.modelio import journal
real = journal.begin_patch
def begin(*a, **k):
    real(*a, **k)
    die()
journal.begin_patch = begin
"""
KILL_MID_WRITE = """
from onnxfix.modelio import filecopy
real = filecopy.write_at
def torn(fd, data, at):
    if os.readlink(f"/proc/self/fd/{fd}").endswith("m.onnx.data"):
        half = bytes(data[: len(data) // 2])
        os.pwrite(fd, half, at)
        os.fsync(fd)
        die()
    return real(fd, data, at)
filecopy.write_at = torn
"""
KILL_AT_MODEL_RENAME = """
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith("m.onnx"):
        die()
    return real(src, dst, *a, **k)
os.replace = replace
"""
KILL_AFTER_MODEL_RENAME = """
from onnxfix.modelio import journal
journal.Journal.finish = die
"""


def rolled_back(model: str, tensors: str = "'conv1.weight'") -> str:
    return (
        f"WARNING: {model}: an onnxfix run changing it was killed before it finished; the old "
        f"values of {tensors} were put back, so the model is as it was before that run\n"
    )


def untouched(model: str) -> str:
    return (
        f"WARNING: {model}: an onnxfix run changing it was killed before it finished; no byte "
        "had been changed yet, so the model is as it was before that run\n"
    )


# ------------------------------------------------------------------- kills: --in-place


@pytest.mark.parametrize(
    "patch, warning",
    [
        (KILL_AFTER_JOURNAL, untouched("models/m.onnx")),
        (KILL_MID_WRITE, rolled_back("models/m.onnx")),
        (KILL_AT_MODEL_RENAME, rolled_back("models/m.onnx")),
    ],
    ids=["after-journal", "mid-data-write", "before-rename"],
)
@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_in_place_killed_before_the_rename_rolls_back(sb, patch, warning):
    """The issue's case: new kernel bytes in the data file, the old record in the .onnx."""
    watch = sb.watch()
    killed(patch, "set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place")
    assert watch.changes().modified == {"models/m.onnx.data"} or patch is KILL_AFTER_JOURNAL
    result = onnxfix("verify", "models/m.onnx")
    assert (result.returncode, result.stdout, result.stderr) == (0, VERIFIED, warning)
    unchanged(watch)  # the bytes as they were, the journal and the staged .onnx gone


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_in_place_killed_writing_the_journal(sb):
    watch = sb.watch()
    killed(KILL_AT_JOURNAL_RENAME, "set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place")
    assert watch.changes().modified == set()
    result = onnxfix("verify", "models/m.onnx")
    assert (result.returncode, result.stdout, result.stderr) == (0, VERIFIED, "")
    result = onnxfix("set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place")
    assert result.returncode == 0, result.stderr
    # The half-written journal and the staged file of the killed run are gone too.
    unchanged(watch, allowed=["models/m.onnx", "models/m.onnx.data"])


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_in_place_killed_after_the_rename_keeps_the_new_model(sb):
    watch = sb.watch()
    killed(KILL_AFTER_MODEL_RENAME, "set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place")
    result = onnxfix("verify", "models/m.onnx")
    assert (result.returncode, result.stdout, result.stderr) == (0, VERIFIED, "")
    assert not journal_path(Path("models/m.onnx")).exists()
    changes = watch.changes()
    assert changes.modified == {"models/m.onnx", "models/m.onnx.data"} and not changes.added
    inspect = onnxfix("inspect", "models/m.onnx", "--json")
    assert '"box' in inspect.stdout  # the record names the kernel the killed run set


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_in_place_journal_recovered_by_any_command(sb):
    """Not only verify: set-kernel -o from a half-patched model copies the rolled-back one."""
    watch = sb.watch()
    killed(KILL_AT_MODEL_RENAME, "set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place")
    result = onnxfix("set-kernel", "models/m.onnx", *KERNEL, "sobel-x", "-o", "out/c.onnx")
    assert result.returncode == 0 and result.stderr == rolled_back("models/m.onnx")
    assert onnxfix("verify", "out/c.onnx").stdout == VERIFIED
    unchanged(watch, allowed=["out/c.onnx", "out/c.onnx.data"])


# ------------------------------------------------------------------ journals are hostile


def _journal_for(sb: Sandbox, location: str, old: bytes, new: bytes) -> Path:
    """A journal as a killed in-place run writes it, naming ``location``."""
    import hashlib
    import json

    header = {
        "model": "m.onnx",
        "new_ino": 1,
        "new_size": 1,
        "staged": None,
        "patches": [
            {
                "tensor": "conv1.weight",
                "location": location,
                "offset": 0,
                "length": len(old),
                "old_sha256": hashlib.sha256(old).hexdigest(),
                "new_sha256": hashlib.sha256(new).hexdigest(),
            }
        ],
    }
    path = journal_path(sb.models / "m.onnx")
    path.write_bytes(b"onnxfix-journal 1\n" + json.dumps(header).encode() + b"\n" + old + new)
    return path


def cannot_roll_back(why: str) -> str:
    return (
        "'models/m.onnx' was being changed by an onnxfix run that was killed, and it cannot be "
        f"rolled back: {why}. Restore the model and its data from a copy, then delete "
        "'models/.m.onnx.onnxfix-journal'"
    )


@pytest.mark.parametrize("location", ["../outside/secret", "notes.txt"])
def test_forged_journal_cannot_write_elsewhere(sb, run, location):
    (sb.models / "notes.txt").write_bytes(b"the user's own file, beside the model")
    _journal_for(sb, location, b"X" * 16, b"Y" * 16)
    watch = sb.watch()
    result = run("verify", "models/m.onnx")
    why = f"its journal names {location!r}, which is not a data file of the model"
    refused(result, cannot_roll_back(why), watch)


def test_forged_journal_cannot_write_unknown_bytes(sb, run):
    """It names the model's own data file, but the bytes there are neither its old nor its new
    ones: nothing is written."""
    _journal_for(sb, "m.onnx.data", b"X" * 864, b"Y" * 864)
    watch = sb.watch()
    result = run("verify", "models/m.onnx")
    why = (
        "bytes 0 to 864 of 'models/m.onnx.data' (tensor 'conv1.weight') are neither its old nor "
        "its new values"
    )
    refused(result, cannot_roll_back(why), watch)


def test_unreadable_journal(sb, run):
    journal_path(sb.models / "m.onnx").write_bytes(b"garbage")
    watch = sb.watch()
    result = run("verify", "models/m.onnx")
    why = (
        "its journal 'models/.m.onnx.onnxfix-journal' cannot be read (it does not start as an "
        "onnxfix journal)"
    )
    refused(result, cannot_roll_back(why), watch)


# ---------------------------------------------------------- kills: -o over an old output


KILL_BETWEEN_PAIR = """
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith("f.onnx"):
        die()
    return real(src, dst, *a, **k)
os.replace = replace
"""


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_output_pair_killed_between_renames(sb):
    """-o over an output of an earlier run: the new data file is in, the new .onnx not yet. The
    next command puts the old data file back, so the old output is whole."""
    assert (
        onnxfix("set-kernel", "models/m.onnx", *KERNEL, "sobel-y", "-o", "out/f.onnx").returncode
        == 0
    )
    watch = sb.watch()
    killed(KILL_BETWEEN_PAIR, "set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx")
    assert watch.changes().modified == {"out/f.onnx.data"}
    result = onnxfix("verify", "out/f.onnx")
    assert result.returncode == 0 and result.stdout == VERIFIED
    assert result.stderr == (
        "WARNING: out/f.onnx: an onnxfix run changing it was killed before it finished; its old "
        "data file 'out/f.onnx.data' was put back, so the model is as it was before that run\n"
    )
    unchanged(watch)  # the killed run's staging folder is gone with its journal
    assert (
        onnxfix("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx").returncode == 0
    )
    unchanged(watch, allowed=["out/f.onnx", "out/f.onnx.data"])


# ---------------------------------------------------------------- stale temporary folders


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_killed_runs_leave_nothing_for_long(sb):
    """A run killed while its output is staged leaves its folder; the next one removes it."""
    watch = sb.watch()
    killed(KILL_BETWEEN_PAIR, "set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx")
    assert any(p.startswith("out/.f.onnx.") for p in watch.changes().added)
    result = onnxfix("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx")
    assert result.returncode == 0, result.stderr
    unchanged(watch, allowed=["out/f.onnx", "out/f.onnx.data"])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stale_cleanup_spares_live_runs(sb, run):
    me = os.getpid()
    live = sb.out / f".f.onnx.onnxfix-{me}-{_start_time(me)}.abcd1234.tmp"
    reused = sb.out / f".f.onnx.onnxfix-{me}-{_start_time(me) + 1}.abcd1234.tmp"  # pid reused
    dead = sb.out / ".f.onnx.onnxfix-999999999-5.zzzz9999.tmp.onnx"
    mine = sb.out / ".f.onnx.notes"  # the user's, named alike
    for folder in (live, reused):
        folder.mkdir()
        (folder / "f.onnx").write_bytes(b"x" * 1000)
    dead.write_bytes(b"x")
    mine.write_bytes(b"x")
    watch = sb.watch()
    result = run("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx")
    assert result.exit_code == 0, result.output
    changes = watch.changes()
    assert changes.removed == {
        str(reused.relative_to(sb.root)),
        f"{reused.relative_to(sb.root)}/f.onnx",
        str(dead.relative_to(sb.root)),
    }
    unchanged(
        watch,
        allowed=[
            "out/f.onnx",
            "out/f.onnx.data",
            str(reused.relative_to(sb.root)),
            str(dead.relative_to(sb.root)),
        ],
    )


def test_stale_folder_of_an_older_onnxfix_is_reported(sb):
    legacy = sb.out / ".f.onnx.k3j9x0qa.tmp"
    legacy.mkdir()
    result = onnxfix("set-kernel", "models/m.onnx", *KERNEL, "box", "-o", "out/f.onnx")
    assert result.returncode == 0
    assert result.stderr == (
        "WARNING: out/.f.onnx.k3j9x0qa.tmp looks like the temporary folder of a killed run of an "
        "older onnxfix; remove it if no onnxfix is running\n"
    )
    assert legacy.is_dir()


def test_in_place_staged_file_of_a_killed_run_is_removed(sb):
    watch = sb.watch()
    # Killed before the journal: only the staged .onnx beside the model is left.
    killed(
        "from onnxfix.modelio import journal\njournal.begin_patch = die\n",
        "set-kernel",
        "models/m.onnx",
        *KERNEL,
        "box",
        "--in-place",
    )
    (staged,) = [p for p in watch.changes().added if p.endswith(".tmp.onnx")]
    assert staged.startswith("models/.m.onnx.onnxfix-")
    assert onnxfix("set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place").returncode == 0
    unchanged(watch, allowed=["models/m.onnx", "models/m.onnx.data"])


# ------------------------------------------------------------------ kills: make-artifacts


KILL_AFTER_SWAP = """
import onnxfix.commands.make_artifacts as ma
real = ma.replace_folder
def move(*a, **k):
    real(*a, **k)
    die()
ma.replace_folder = move
"""
KILL_BEFORE_SWAP = """
import onnxfix.commands.make_artifacts as ma
ma.replace_folder = die
"""
KILL_BETWEEN_FALLBACK_RENAMES = """
import errno
import onnxfix.modelio.folders as folders
def no_exchange(a, b):
    raise OSError(errno.EINVAL, "not supported here")
folders.exchange = no_exchange
def killing(real):
    def move(src, dst, *a, **k):
        if os.path.realpath(dst) == os.environ["ART"]:  # the new folder's rename into place
            die()
        return real(src, dst, *a, **k)
    return move
os.rename, os.replace = killing(os.rename), killing(os.replace)
"""


def _artifacts_state(art: Path) -> dict[str, str]:
    return {name: sha256(art / name) for name in sorted(os.listdir(art))}


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
@pytest.mark.parametrize("when", ["before", "after"])
def test_make_artifacts_force_killed_around_the_swap(sb, when):
    """The folder is the old one or the new one, never only under a hidden name."""
    art = sb.root / "art"
    old = os.stat(art).st_ino  # the build is deterministic: the folder tells old from new
    patch = KILL_BEFORE_SWAP if when == "before" else KILL_AFTER_SWAP
    killed(patch, "make-artifacts", "models/m.onnx", "-o", "art", "--force", "--no-self-test")
    assert sorted(os.listdir(art)) == sorted(ARTIFACTS)
    assert (os.stat(art).st_ino == old) == (when == "before")
    assert onnxfix("verify", "art").returncode == 0
    hidden = [n for n in os.listdir(sb.root) if n.startswith(".art.")]
    assert len(hidden) == 1  # the new build (before) or the old folder (after), owner gone
    result = onnxfix("make-artifacts", "models/m.onnx", "-o", "art", "--force", "--no-self-test")
    assert result.returncode == 0, result.stderr
    assert [n for n in os.listdir(sb.root) if n.startswith(".art.")] == []


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_make_artifacts_fallback_swap_killed_is_put_back(sb):
    """Where the file system cannot exchange two names: killed between the two renames, the
    old folder is aside; the next run puts it back (and says so) before anything else."""
    art = sb.root / "art"
    old = _artifacts_state(art)
    killed(
        KILL_BETWEEN_FALLBACK_RENAMES,
        "make-artifacts",
        "models/m.onnx",
        "-o",
        "art",
        "--force",
        "--no-self-test",
        env={"ART": str(art.resolve())},
    )
    assert not art.exists()
    result = onnxfix("make-artifacts", "models/m.onnx", "-o", "art", "--no-self-test")
    assert result.returncode == 1
    assert result.stderr == (
        f"WARNING: {art.resolve()} was put back: a run replacing it was killed "
        "between two renames\n"
        "Error: 'art' is not empty; add --force to replace its contents, or choose another -o\n"
    )
    assert _artifacts_state(art) == old


def test_make_artifacts_fallback_swap_completes(sb, run, monkeypatch):
    import errno

    import onnxfix.modelio.folders as folders

    def no_exchange(a, b):
        raise OSError(errno.EINVAL, "not supported here")

    monkeypatch.setattr(folders, "exchange", no_exchange)
    watch = sb.watch()
    result = run("make-artifacts", "models/m.onnx", "-o", "art", "--force", "--no-self-test")
    assert result.exit_code == 0, result.output
    unchanged(watch, allowed=["art"])
    assert sorted(os.listdir(sb.root / "art")) == sorted(ARTIFACTS)


# ---------------------------------------------------------------------------- concurrency


WRITER_A = """
real = os.replace
def replace(src, dst, *a, **k):
    real(src, dst, *a, **k)
    if str(dst).endswith(".onnx.data"):  # its data is in, its .onnx not yet: wait for B
        Path(os.environ["MID"]).touch()
        deadline = time.monotonic() + 120
        while not Path(os.environ["GO"]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
os.replace = replace
"""
WRITER_B = """
import fcntl
real = fcntl.flock
folder = os.stat(os.environ["FOLDER"])
def flock(fd, op):
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == (folder.st_dev, folder.st_ino) and op & fcntl.LOCK_EX:
        Path(os.environ["LOCKING"]).touch()  # about to wait for A's lock
    return real(fd, op)
fcntl.flock = flock
"""


def _start(patch: str, args, env) -> subprocess.Popen:
    code = PRELUDE + textwrap.dedent(patch) + MAIN
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _wait_for(condition, what: str, limit: float = 120) -> None:
    """Poll ``condition`` (a bounded wait for another process, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_concurrent_writers_end_consistent(sb, tmp_path_factory):
    """A writes its data file and stops before its .onnx; B then runs whole (or waits for A's
    lock). Without the lock A's .onnx would end with B's data."""
    signals = tmp_path_factory.mktemp("signals")
    env = {
        "MID": str(signals / "mid"),
        "GO": str(signals / "go"),
        "LOCKING": str(signals / "locking"),
        "FOLDER": str(sb.out),
    }
    args = ("set-kernel", "models/m.onnx", "--layer", "conv1", "-o", "out/f.onnx", "--kernel")
    a = _start(WRITER_A, (*args, "box"), env)
    try:
        _wait_for(lambda: Path(env["MID"]).exists() or a.poll() is not None, "A's data file")
        assert a.poll() is None, a.communicate()
        b = _start(WRITER_B, (*args, "sobel-y"), env)
        try:
            _wait_for(lambda: b.poll() is not None or Path(env["LOCKING"]).exists(), "B")
            Path(env["GO"]).touch()
            assert b.wait(timeout=120) == 0, b.communicate()
        finally:
            b.kill()
        assert a.wait(timeout=120) == 0, a.communicate()
    finally:
        a.kill()
    result = onnxfix("verify", "out/f.onnx")
    assert (result.returncode, result.stdout, result.stderr) == (0, VERIFIED, "")
    assert sorted(os.listdir(sb.out)) == ["f.onnx", "f.onnx.data"]


# ------------------------------------------------------------------- the build child dies


HANG = """
import os, time
from pathlib import Path

def hang(job):
    tmp = Path(job["pidfile"] + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, job["pidfile"])
    time.sleep(600)
    return {}
"""
PARENT = """
import onnxfix.commands.make_artifacts as ma
real = ma.run_isolated
def run_isolated(task, job, workdir, **k):
    return real("hang_task:hang", {"pidfile": os.environ["PIDFILE"]}, workdir, **k)
ma.run_isolated = run_isolated
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == b"Z"  # dead, waiting for init to reap it


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_build_child_dies_with_its_parent(sb, tmp_path_factory):
    helpers = tmp_path_factory.mktemp("helpers")
    (helpers / "hang_task.py").write_text(HANG)
    pidfile = helpers / "child.pid"
    env = {
        "PIDFILE": str(pidfile),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(helpers), os.environ.get("PYTHONPATH")])),
    }
    watch = sb.watch()
    parent = _start(PARENT, ("make-artifacts", "models/m.onnx", "-o", "out/art"), env)
    child = None
    try:
        _wait_for(lambda: pidfile.exists() or parent.poll() is not None, "the build child")
        assert parent.poll() is None, parent.communicate()
        child = int(pidfile.read_text())
        assert not _gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        _wait_for(lambda: _gone(child), "the child to die with its parent", limit=30)
    finally:
        parent.kill()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
    # Its staging folder is left; the next make-artifacts there removes it.
    (staging,) = {p for p in watch.changes().added if "/" not in p.removeprefix("out/")}
    assert staging.startswith("out/.art.onnxfix-")
    result = onnxfix("make-artifacts", "models/m.onnx", "-o", "out/art", "--no-self-test")
    assert result.returncode == 0, result.stderr
    unchanged(watch, allowed=["out/art"])


def test_everything_still_round_trips(sb, run):
    """After all that: the legitimate commands still do what they did, in place and not."""
    watch = sb.watch()
    assert run("set-kernel", "models/m.onnx", *KERNEL, "box", "--in-place").exit_code == 0
    assert run("verify", "models/m.onnx").exit_code == 0
    assert run("train", "art", "--data", "data.npz", "--val", "val.npz").exit_code == 0
    assert run("export", "art", "-o", "out/f.onnx").exit_code == 0
    assert run("verify", "out/f.onnx").exit_code == 0
    unchanged(
        watch,
        allowed=[
            "models/m.onnx",
            "models/m.onnx.data",
            "art/checkpoint",
            "out/f.onnx",
            "out/f.onnx.data",
        ],
    )

"""The installed command, as a user runs it: it ends with os._exit (skipping the interpreter's
teardown), so its output, exit status and files must be complete before that."""

from __future__ import annotations

import onnx

from tests.support.cli import onnxfix
from tests.support.factories import save, simple_cnn


def test_success_prints_everything_and_leaves_the_result_whole(tmp_path):
    model = save(simple_cnn(), tmp_path / "m.onnx")
    proc = onnxfix(
        "set-kernel", model, "--layer", "conv1", "--kernel", "sobel-x", "-o", "f.onnx", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "wrote f.onnx"
    assert proc.stderr == ""
    onnx.checker.check_model(str(tmp_path / "f.onnx"), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "m.onnx"]
    # A long listing through a pipe arrives whole.
    proc = onnxfix("inspect", "--json", tmp_path / "f.onnx")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("}")
    assert '"fixed": true' in proc.stdout


def test_errors_keep_their_exit_status_and_one_line(tmp_path):
    proc = onnxfix(
        "set-kernel",
        tmp_path / "missing.onnx",
        "--layer",
        "#0",
        "--kernel",
        "box",
        "-o",
        tmp_path / "o.onnx",
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1
    proc = onnxfix("set-kernel", "--no-such-option")
    assert proc.returncode == 2 and proc.stderr.endswith(
        "Error: No such option '--no-such-option'.\n"
    )
    proc = onnxfix("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("onnxfix, version ")

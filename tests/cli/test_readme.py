"""The README's commands are true: the set-up command runs as written, the test command is the one
CI runs, and the command reference matches --help."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text()


def command(name: str) -> str:
    match = re.search(rf"<!-- command: {name} -->\n```sh\n(.*?)\n```", README, re.S)
    assert match, f"README has no '{name}' command block"
    return match.group(1)


def test_help_blocks_match_the_cli():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import readme_help
    finally:
        sys.path.pop(0)
    assert readme_help.render(README) == README, "run: python tools/readme_help.py"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = command("test").split(" && ")
    assert install == "pip install '.[test]'"
    assert 'python -m pip install --quiet ".[test]"' in ci
    assert f"\n{test}\n" in ci


@pytest.mark.slow
def test_setup_command_runs_on_a_fresh_copy(tmp_path):
    """Copy the project, run the README's first command as written, check what it produced."""
    work = tmp_path / "onnxfix"
    shutil.copytree(
        ROOT,
        work,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "__pycache__",
            "*.egg-info",
            "build",
            ".*_cache",
            "artifacts",
            "fixed.onnx",
        ),
    )
    proc = subprocess.run(
        ["bash", "-c", command("setup")], cwd=work, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fixed weight 'edges.weight' of layer '/edges/Conv': sobel-x" in proc.stdout
    assert "epoch 3: train loss" in proc.stdout
    assert proc.stdout.endswith("all 1 fixed kernels match their record\n")
    assert (work / "artifacts" / "checkpoint").is_file()

"""The CLI stays thin: importing onnxfix, starting the command and printing any help imports none
of numpy, onnx, onnxruntime or protobuf (each costs start-up time; a command imports them when it
runs). Checked in a fresh interpreter, by the modules it ends up with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from onnxfix.cli import cli

HEAVY = ("numpy", "onnx", "onnxruntime", "google.protobuf")


def heavy(modules) -> list[str]:
    """The modules of ``modules`` that are, or are inside, one of HEAVY."""
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def modules_after(code: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter that has run ``code``."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("code", ["import onnxfix", "import onnxfix.cli"])
def test_import_is_light(code):
    modules = modules_after(code)
    assert code.split()[-1] in modules
    assert heavy(modules) == [], f"{code!r} imported {', '.join(heavy(modules))}"


COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"]] + [[name, "--help"] for name in COMMANDS],
    ids=" ".join,
)
def test_help_and_version_are_light(args):
    # onnxfix.cli.main ends with os._exit: call the click group instead, then look.
    code = (
        "from onnxfix.cli import cli\n"
        f"status = cli({args!r}, standalone_mode=False)\n"
        "assert status in (None, 0), status"
    )
    modules = modules_after(code)
    assert heavy(modules) == [], f"onnxfix {' '.join(args)} imported {', '.join(heavy(modules))}"


def test_the_installed_command_starts_light():
    """``python -m onnxfix --help`` as a user runs it; -X importtime names every module imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "onnxfix", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("Usage: onnxfix ")
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "onnxfix.cli" in imported
    assert heavy(imported) == [], f"onnxfix --help imported {', '.join(heavy(imported))}"

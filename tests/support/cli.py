"""The CLI in-process (``Run``, the ``run`` fixture) and as a user runs it (``onnxfix``)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from onnxfix.cli import cli


class Run:
    """Invoke the CLI in-process; stdout and stderr kept apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def onnxfix(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m onnxfix ARGS`` in a child process, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "onnxfix", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )

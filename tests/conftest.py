from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxfix.cli import cli


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Run:
    """Invoke the CLI in-process; stdout and stderr kept apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run() -> Run:
    return Run()

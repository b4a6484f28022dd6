"""Fixtures for every test: ``run``, the CLI in-process."""

from __future__ import annotations

import pytest

from tests.support.cli import Run


@pytest.fixture
def run() -> Run:
    return Run()

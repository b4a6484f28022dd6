"""The sandbox every adversarial case runs in (see tests/support/hostile.py)."""

from __future__ import annotations

import pytest

from tests.support.hostile import Sandbox


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)

"""Fixtures of the command tests."""

from __future__ import annotations

import pytest

from tests.support.factories import save, simple_cnn


@pytest.fixture
def cnn(tmp_path):
    return save(simple_cnn(), tmp_path / "cnn.onnx")

"""The repository's folders, wherever the tests run from."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
DATA = TESTS / "data"
SAMPLES = ROOT / "samples"
README = ROOT / "README.md"

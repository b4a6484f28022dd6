"""A crash inside ONNX Runtime becomes a clean error naming the stage; nothing is left behind."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from onnxfix.errors import ArtifactsError
from onnxfix.training.isolation import run_isolated
from tests.support.paths import SUPPORT


@pytest.fixture(autouse=True)
def tests_importable_in_child(monkeypatch):
    """The child imports tests/support/crashers.py as ``crashers``."""
    monkeypatch.setenv("PYTHONPATH", str(SUPPORT))


def test_result_comes_back(tmp_path):
    assert run_isolated("crashers:ok", {"value": 42}, tmp_path) == {"echo": 42}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "task, message",
    [
        (
            "crashers:segfault",
            "onnxruntime crashed (SIGSEGV) while building the gradient graph; onnxfix stopped and wrote nothing",
        ),
        (
            "crashers:abort",
            "onnxruntime crashed (SIGABRT) while running a training step (forward and backward); onnxfix stopped and wrote nothing",
        ),
    ],
)
def test_crash_becomes_an_error_naming_the_stage(tmp_path, task, message):
    with pytest.raises(ArtifactsError) as e:
        run_isolated(task, {}, tmp_path)
    assert str(e.value).startswith(message)
    assert str(e.value).endswith("Run with -v to see its log")
    assert list(tmp_path.iterdir()) == []


def test_user_errors_keep_their_class_and_text(tmp_path):
    with pytest.raises(ArtifactsError, match="^a message for the user$"):
        run_isolated("crashers:user_error", {}, tmp_path)


FRAGMENTED = """
import sys
from onnxfix.training.ort import return_freed_buffers
if sys.argv[1] == "fixed":
    return_freed_buffers()
big = bytearray(16 << 20)  # freed: glibc now serves blocks up to 16 MiB from its heap
del big
blocks = [bytearray(1 << 20) for _ in range(300)]
del blocks[1::2]  # 150 MiB freed between live blocks, as a loader leaves its buffers
status = open("/proc/self/status").read()
print(int(status.split("VmRSS:")[1].split()[0]) >> 10)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="return_freed_buffers acts on glibc's malloc only",
)
def test_freed_buffers_leave_the_process(monkeypatch):
    """Before a checkpoint load (the self-test's child, and onnxfix train in its own process)
    glibc's mmap threshold is fixed, so freed blocks between live ones leave the process, as
    those ONNX Runtime frees loading a split checkpoint (3 GB: self-test 8.7 -> 6.7 GB, train
    14.8 -> 12.7 GB, docs/performance.md)."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)

    def rss_mib(mode: str) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", FRAGMENTED, mode], capture_output=True, text=True, check=True
        )
        return int(proc.stdout)

    kept, returned = rss_mib("default"), rss_mib("fixed")
    assert kept >= 300 and returned <= 200, (kept, returned)

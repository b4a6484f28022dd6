"""Child-process tasks that die the way ONNX Runtime sometimes does (for training/test_isolation.py).

The child imports this file as the top-level module ``crashers`` (tests/support on PYTHONPATH):
it must import nothing from ``tests``.
"""

from __future__ import annotations

import ctypes
import os
import signal

from onnxfix.training.isolation import set_stage


def segfault(job: dict) -> dict:
    set_stage("building the gradient graph")
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return {}


def abort(job: dict) -> dict:
    set_stage("running a training step (forward and backward)")
    os.kill(os.getpid(), signal.SIGABRT)
    return {}


def killed(job: dict) -> dict:
    """Killed from outside, as the kernel's out-of-memory killer does (SIGKILL)."""
    set_stage("building the gradient graph")
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def stopped(job: dict) -> dict:
    """Stopped from outside (SIGTERM), as ``kill`` or a job's time limit does."""
    set_stage("building the gradient graph")
    os.kill(os.getpid(), signal.SIGTERM)
    return {}


def user_error(job: dict) -> dict:
    from onnxfix.errors import ArtifactsError

    raise ArtifactsError("a message for the user")


def ok(job: dict) -> dict:
    return {"echo": job["value"]}

"""Run onnxruntime work in a child process, so a crash in it cannot take onnxfix down.

Some real models make ONNX Runtime segfault or abort while it builds the gradient graph or runs
the first step. The child runs one named task (``python -m onnxfix.training.isolation TASK JOB``),
records the stage it is in, and returns its result as JSON; the parent turns a signal into a
clean :class:`~onnxfix.errors.ArtifactsError` naming the stage, and re-raises user errors the
child raised as the same class. The child's stderr (ONNX Runtime's log) is kept from the user
and shown only with ``-v``.

The child never outlives the parent: a build holds gigabytes and writes into the parent's
staging folder, so a child left running after its parent was killed (SIGKILL, the OOM killer, a
CI timeout) would keep both for nothing. On Linux the child asks the kernel to SIGKILL it when
the parent dies (``prctl(PR_SET_PDEATHSIG)``, :func:`_die_with_parent`), then checks the parent
is still there, in case it died before that call; elsewhere a thread watches the parent's pid.
The parent kills the child on any exception, KeyboardInterrupt included (``subprocess.run``).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from onnxfix import errors

__all__ = ["run_isolated", "set_stage", "JSON"]

logger = logging.getLogger(__name__)

TASKS = {
    "build": "onnxfix.training.build:build_in_child",
    "selftest": "onnxfix.training.selftest:selftest_in_child",
}
_STAGE_FILE: str | None = None
# A job or result as it crosses the process boundary: typed records (onnxfix.training.jobs,
# onnxfix.training.layout) are turned into this and back by the caller and the task.
JSON = dict[str, Any]


def set_stage(stage: str) -> None:
    """Record what the child is doing now, for the message if it dies."""
    if _STAGE_FILE is not None:
        Path(_STAGE_FILE).write_text(stage)


def run_isolated(task: str, job: JSON, workdir: Path, *, timeout: float | None = None) -> JSON:
    """Run ``task`` on ``job`` in a child process with ``workdir`` as its current directory."""
    workdir = workdir.resolve()
    label = task.replace(":", "-")
    job_path = workdir / f".onnxfix-{label}.job.json"
    result_path = workdir / f".onnxfix-{label}.result.json"
    stage_path = workdir / f".onnxfix-{label}.stage"
    job_path.write_text(json.dumps(job))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxfix.training._child",
                task,
                str(job_path),
                str(result_path),
                str(stage_path),
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
        )
        stage = stage_path.read_text() if stage_path.exists() else "starting"
        if proc.stderr.strip():
            logger.debug("%s child stderr:\n%s", task, proc.stderr)
        if proc.returncode < 0 or not result_path.exists():
            tail = _last_line(proc.stderr)
            crashed = proc.returncode < 0
            signum = -proc.returncode if crashed else None
            # Killed from outside: not onnxruntime's fault, and the message says so.
            if signum is not None and signum in errors.OUTSIDE_SIGNALS:
                raise errors.OnnxRuntimeCrash(_killed_message(task, signum, stage), signal=signum)
            what = (
                f"onnxruntime crashed ({_signal_name(proc.returncode)})"
                if crashed
                else f"the {task} process died (exit status {proc.returncode})"
            )
            message = (
                f"{what} while {stage}; onnxfix stopped and wrote nothing"
                + (f". Last message: {tail}" if tail else "")
                + ". Run with -v to see its log"
            )
            if crashed:
                raise errors.OnnxRuntimeCrash(message, signal=signum)
            raise errors.ArtifactsError(message)
        result = json.loads(result_path.read_text())
    except subprocess.TimeoutExpired:
        stage = stage_path.read_text() if stage_path.exists() else "starting"
        raise errors.ArtifactsError(
            f"onnxruntime took longer than {timeout:.0f} s while {stage}; stopped"
        ) from None
    finally:
        for p in (job_path, result_path, stage_path):
            p.unlink(missing_ok=True)
    if "error" in result:
        found = getattr(errors, result["error_class"], None)
        error_class: type[errors.OnnxfixError] = (
            found
            if isinstance(found, type) and issubclass(found, errors.OnnxfixError)
            else errors.OnnxfixError
        )
        raise error_class(result["error"])
    if "bug" in result:
        raise RuntimeError(f"onnxfix {task} failed in its child process:\n{result['bug']}")
    return result["result"]


def _child_env() -> dict[str, str]:
    # The child must import this same onnxfix, installed or not, from any working directory.
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": root + (os.pathsep + path if path else ""),
        "PYTHONFAULTHANDLER": "1",
        _PARENT_ENV: str(os.getpid()),
    }


# The parent's pid, for the child to check it is still there (_die_with_parent).
_PARENT_ENV = "ONNXFIX_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: die when the parent dies, however it dies (see the module)."""
    try:
        parent = int(os.environ.get(_PARENT_ENV, ""))
    except ValueError:
        return  # not started by run_isolated
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            _watch_parent(parent)
    else:
        _watch_parent(parent)
    if os.getppid() != parent:  # it died before the kernel was asked to tell us
        os._exit(1)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="onnxfix-parent-watch", daemon=True).start()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _killed_message(task: str, signum: int, stage: str) -> str:
    """A child killed from outside: out of memory (SIGKILL), or stopped (SIGTERM, ...)."""
    name = _signal_name(-signum)
    if signum == getattr(signal, "SIGKILL", None):
        return (
            f"the {task} process was killed ({name}) while {stage}: a kill from outside, not a "
            "crash in onnxruntime, most often the system's out-of-memory killer; onnxfix stopped "
            "and wrote nothing. Check the free memory (the kernel's log says if it ran out) and "
            "run again"
        )
    return (
        f"the {task} process was stopped ({name}) while {stage}: a signal from outside (a kill "
        "command, a job's time limit), not a crash in onnxruntime; onnxfix stopped and wrote "
        "nothing. Run again"
    )


def _last_line(text: str) -> str:
    """ONNX Runtime's last words: the last line before Python's fault-handler report."""
    text = text.split("Fatal Python error")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "RuntimeWarning" not in ln]
    return lines[-1][:300] if lines else ""


def child_main(task: str, job_path: str, result_path: str, stage_path: str) -> int:
    """The child process's side (``onnxfix.training._child``): run the task, write its result."""
    global _STAGE_FILE
    _die_with_parent()
    _STAGE_FILE = stage_path
    module, func = TASKS.get(task, task).split(":")
    job = json.loads(Path(job_path).read_text())
    try:
        result = {"result": getattr(importlib.import_module(module), func)(job)}
        code = 0
    except errors.OnnxfixError as e:
        result = {"error": e.template, "error_class": type(e).__name__}  # params kept
        code = 1
    except Exception:  # a bug: the parent re-raises it with this traceback
        result = {"bug": traceback.format_exc()}
        code = 2
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return code

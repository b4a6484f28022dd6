"""Run onnxruntime work in a child process, so a crash in it cannot take onnxfix down.

Some real models make ONNX Runtime segfault or abort while it builds the gradient graph or runs
the first step. The child runs one named task (``python -m onnxfix.training.isolation TASK JOB``),
records the stage it is in, and returns its result as JSON; the parent turns a signal into a
clean :class:`~onnxfix.errors.ArtifactsError` naming the stage, and re-raises user errors the
child raised as the same class. The child's stderr (ONNX Runtime's log) is kept from the user
and shown only with ``-v``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
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
            what = (
                f"onnxruntime crashed ({_signal_name(proc.returncode)})"
                if crashed
                else f"the {task} process died (exit status {proc.returncode})"
            )
            cls = errors.OnnxRuntimeCrash if crashed else errors.ArtifactsError
            raise cls(
                f"{what} while {stage}; onnxfix stopped and wrote nothing"
                + (f". Last message: {tail}" if tail else "")
                + ". Run with -v to see its log"
            )
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
    }


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _last_line(text: str) -> str:
    """ONNX Runtime's last words: the last line before Python's fault-handler report."""
    text = text.split("Fatal Python error")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "RuntimeWarning" not in ln]
    return lines[-1][:300] if lines else ""


def child_main(task: str, job_path: str, result_path: str, stage_path: str) -> int:
    """The child process's side (``onnxfix.training._child``): run the task, write its result."""
    global _STAGE_FILE
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

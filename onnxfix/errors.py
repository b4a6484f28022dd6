"""The exceptions onnxfix raises for problems a user can fix.

Every user-facing failure is an :class:`OnnxfixError`; the CLI prints its message as
``Error: ...`` and exits 1. Anything else that escapes is a bug and keeps its traceback.

A message that names one of the caller's parameters does so with :func:`param`: ``str(error)``
says it in the library's words (``layers``, ``force=True``), and the CLI renders the same
message with its flags (``--layer``, ``--force``) through :meth:`OnnxfixError.render`. So the
library never speaks of flags its API does not have, and the CLI's messages keep them.
"""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import Mapping

__all__ = [
    "param",
    "OnnxfixError",
    "ModelFileError",
    "SelectorError",
    "KernelSpecError",
    "KernelShapeError",
    "UnsupportedWeightError",
    "ProvenanceError",
    "ArtifactsError",
    "OnnxRuntimeCrash",
    "OUTSIDE_SIGNALS",
    "TrainingStepError",
    "TrainingDataError",
    "TrainingDivergedError",
    "VerifyError",
]


# A parameter reference inside a message: name and library wording, between separators that
# no user text holds (ASCII record/unit separators).
_PARAM = re.compile("\x1e([A-Za-z_:]+)\x1f([^\x1e]*)\x1e")


def param(name: str, text: str | None = None) -> str:
    """A reference to the caller's parameter ``name`` in an error message, shown as ``text``
    (default: the name) by the library and as the parameter's flag by the CLI."""
    return f"\x1e{name}\x1f{text if text is not None else name}\x1e"


def render_params(template: str, flags: Mapping[str, str] | None = None) -> str:
    """``template`` with each :func:`param` reference said as ``flags`` says (name -> words),
    else in the library's words: for warnings and notes, as :meth:`OnnxfixError.render`."""
    names = flags or {}
    return _PARAM.sub(lambda m: names.get(m.group(1), m.group(2)), template)


class OnnxfixError(Exception):
    """A problem with the user's input or request; the message says how to fix it.

    ``args[0]`` is the message as written, with its :func:`param` references: pass it on (not
    ``str(error)``) when the message goes to another process or into another error.
    """

    @property
    def template(self) -> str:
        return str(self.args[0]) if self.args else ""

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message, each parameter named by ``flags`` (name -> how to say it) if given
        there, else in the library's words."""
        return render_params(self.template, flags)

    def __str__(self) -> str:
        return self.render()


class ModelFileError(OnnxfixError):
    """A model, kernel or data file cannot be read or written."""


class SelectorError(OnnxfixError):
    """A ``--layer`` selector matches no conv layer (or is malformed)."""


class KernelSpecError(OnnxfixError):
    """A ``--kernel`` spec cannot be parsed or evaluated."""


class KernelShapeError(OnnxfixError):
    """A kernel cannot be fitted to the chosen conv's weight shape."""


class UnsupportedWeightError(OnnxfixError):
    """The conv's weight cannot be fixed (quantized, shared, computed at run time...)."""


class ProvenanceError(OnnxfixError):
    """The ``onnxfix.fixed_kernels`` record is missing or malformed."""


class ArtifactsError(OnnxfixError):
    """Training artifacts cannot be built, loaded or checked."""


# Signals that end a process from outside it (the kernel's out-of-memory killer, ``kill``, a
# CI job's timeout, a closed terminal), not from a fault in the code it runs.
OUTSIDE_SIGNALS = frozenset(
    s for s in (getattr(_signal, n, None) for n in ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP")) if s
)


class OnnxRuntimeCrash(ArtifactsError):
    """The child process running ONNX Runtime died (a signal, or an exit without a result).

    ``signal`` is the number of the signal that ended it, if one did: a fault in ONNX Runtime
    (SIGSEGV, SIGFPE, SIGABRT, SIGBUS) or a kill from outside (:data:`OUTSIDE_SIGNALS`).
    """

    def __init__(self, message: str, *, signal: int | None = None) -> None:
        super().__init__(message)
        self.signal = signal

    @property
    def from_outside(self) -> bool:
        """Killed by someone else (out of memory, ``kill``), not by a fault in ONNX Runtime."""
        return self.signal in OUTSIDE_SIGNALS


class TrainingStepError(ArtifactsError):
    """ONNX Runtime failed a training step of artifacts that were built."""


class TrainingDataError(OnnxfixError):
    """A training or validation data file does not match the model."""


class TrainingDivergedError(OnnxfixError):
    """Training made the loss or a parameter non-finite (NaN or infinite); nothing was saved."""


class VerifyError(OnnxfixError):
    """Fixed kernels differ from their recorded provenance."""

"""The exceptions onnxfix raises for problems a user can fix.

Every user-facing failure is an :class:`OnnxfixError`; the CLI prints its message as
``Error: ...`` and exits 1. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "OnnxfixError",
    "ModelFileError",
    "SelectorError",
    "KernelSpecError",
    "KernelShapeError",
    "UnsupportedWeightError",
    "ProvenanceError",
    "ArtifactsError",
    "OnnxRuntimeCrash",
    "TrainingStepError",
    "TrainingDataError",
    "VerifyError",
]


class OnnxfixError(Exception):
    """A problem with the user's input or request; the message says how to fix it."""


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


class OnnxRuntimeCrash(ArtifactsError):
    """ONNX Runtime killed the child process it ran in (a signal, or an exit without a result)."""


class TrainingStepError(ArtifactsError):
    """ONNX Runtime failed a training step of artifacts that were built."""


class TrainingDataError(OnnxfixError):
    """A training or validation data file does not match the model."""


class VerifyError(OnnxfixError):
    """Fixed kernels differ from their recorded provenance."""

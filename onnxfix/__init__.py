"""onnxfix: fix hand-made convolution kernels in ONNX CNNs and keep them frozen through
ONNX Runtime on-device training."""

from __future__ import annotations

import importlib

from onnxfix._version import __version__
from onnxfix.errors import (
    ArtifactsError,
    KernelShapeError,
    KernelSpecError,
    ModelFileError,
    OnnxfixError,
    ProvenanceError,
    SelectorError,
    TrainingDataError,
    TrainingDivergedError,
    UnsupportedWeightError,
    VerifyError,
)

__all__ = [
    "__version__",
    "inspect_model",
    "set_kernel",
    "make_artifacts",
    "train",
    "export_model",
    "verify",
    "make_named_kernel",
    "ModelReport",
    "SetKernelResult",
    "ArtifactsResult",
    "TrainResult",
    "ExportResult",
    "VerifyReport",
    "OnnxfixError",
    "ModelFileError",
    "SelectorError",
    "KernelSpecError",
    "KernelShapeError",
    "UnsupportedWeightError",
    "ProvenanceError",
    "ArtifactsError",
    "TrainingDataError",
    "TrainingDivergedError",
    "VerifyError",
]

# The commands' modules are imported on first use, not with the package: each pulls in numpy,
# onnx or onnxruntime, and the CLI (which imports this package) should start without them.
_LAZY = {
    "inspect_model": ".commands.inspect",
    "ModelReport": ".commands.inspect",
    "set_kernel": ".commands.set_kernel",
    "SetKernelResult": ".commands.set_kernel",
    "make_artifacts": ".commands.make_artifacts",
    "ArtifactsResult": ".commands.make_artifacts",
    "train": ".commands.train",
    "TrainResult": ".commands.train",
    "export_model": ".commands.export",
    "ExportResult": ".commands.export",
    "verify": ".commands.verify",
    "make_named_kernel": ".kernels.filters",
    "VerifyReport": ".commands.verify",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

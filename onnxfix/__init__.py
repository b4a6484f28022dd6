"""onnxfix: fix hand-made convolution kernels in ONNX CNNs and keep them frozen through
ONNX Runtime on-device training."""

from ._version import __version__
from .artifacts import ArtifactsResult, make_artifacts
from .errors import (
    ArtifactsError,
    KernelShapeError,
    KernelSpecError,
    ModelFileError,
    OnnxfixError,
    ProvenanceError,
    SelectorError,
    TrainingDataError,
    UnsupportedWeightError,
    VerifyError,
)
from .exporting import ExportResult, export_model
from .inspection import ModelReport, inspect_model
from .setkernel import SetKernelResult, set_kernel
from .training import TrainResult, train
from .verifying import VerifyReport, verify

__all__ = [
    "__version__",
    "inspect_model",
    "set_kernel",
    "make_artifacts",
    "train",
    "export_model",
    "verify",
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
    "VerifyError",
]

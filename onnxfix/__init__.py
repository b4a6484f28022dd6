"""onnxfix: fix hand-made convolution kernels in ONNX CNNs and keep them frozen through
ONNX Runtime on-device training."""

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
from .inspection import ModelReport, inspect_model
from .setkernel import SetKernelResult, set_kernel

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "inspect_model",
    "set_kernel",
    "ModelReport",
    "SetKernelResult",
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

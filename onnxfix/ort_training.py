"""The one module that imports ``onnxruntime.training``, always lazily.

``import onnxruntime.training`` runs a package ``__init__`` that imports torch (ONNX Runtime
issue #22070), yet the parts onnxfix needs, ``onnxblock`` (offline artifact building) and
``api`` (the on-device training API), import nothing of torch. So onnxfix registers the package
without running its ``__init__`` and imports just those subpackages, whether torch is installed or
not: that keeps start-up fast and works beside a broken torch too. If ``onnxruntime.training``
was already imported in full, that module is used as it is.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

__all__ = ["onnxblock", "training_api", "ORT_MAX_IR_VERSION"]

# ONNX Runtime 1.19.2 loads models up to IR 10; onnx >= 1.18 writes IR 11+ by default.
ORT_MAX_IR_VERSION = 10


def _training_package() -> types.ModuleType:
    name = "onnxruntime.training"
    if name in sys.modules:
        return sys.modules[name]
    import onnxruntime

    package = types.ModuleType(name)
    package.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    package.__package__ = name
    sys.modules[name] = package
    return package


def onnxblock() -> types.ModuleType:
    _training_package()
    return importlib.import_module("onnxruntime.training.onnxblock")


def training_api() -> types.ModuleType:
    """``onnxruntime.training.api``: CheckpointState, Module, Optimizer, LinearLRScheduler."""
    _training_package()
    return importlib.import_module("onnxruntime.training.api")

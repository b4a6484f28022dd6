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

__all__ = ["onnxblock", "training_api", "checkpoint_schema", "ORT_MAX_IR_VERSION"]

# ONNX Runtime 1.19.2 loads models up to IR 10; onnx >= 1.18 writes IR 11+ by default.
ORT_MAX_IR_VERSION = 10


def _bare_package(name: str) -> types.ModuleType:
    """``name`` (a subpackage of onnxruntime) registered without running its ``__init__``."""
    if name in sys.modules:
        return sys.modules[name]
    import onnxruntime

    package = types.ModuleType(name)
    relative = name.split(".")[1:]
    package.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), *relative)]
    package.__package__ = name
    sys.modules[name] = package
    return package


def _training_package() -> types.ModuleType:
    return _bare_package("onnxruntime.training")


def onnxblock() -> types.ModuleType:
    _training_package()
    return importlib.import_module("onnxruntime.training.onnxblock")


def training_api() -> types.ModuleType:
    """``onnxruntime.training.api``: CheckpointState, Module, Optimizer, LinearLRScheduler."""
    _training_package()
    return importlib.import_module("onnxruntime.training.api")


def checkpoint_schema() -> types.SimpleNamespace:
    """ONNX Runtime's generated flatbuffers bindings for its training checkpoint format.

    ``onnxruntime.tools``' ``__init__`` imports torch when it is installed, and
    ``ort_format_model``'s edits ``sys.path``; neither is needed for these modules.
    """
    _bare_package("onnxruntime.tools")
    _bare_package("onnxruntime.tools.ort_format_model")
    prefix = "onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs."
    names = ("Checkpoint", "ModuleState", "PropertyBag", "StringProperty", "Tensor")
    return types.SimpleNamespace(**{n: importlib.import_module(prefix + n) for n in names})

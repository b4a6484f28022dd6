"""The one module that imports ``onnxruntime.training``, always lazily.

``import onnxruntime.training`` runs a package ``__init__`` that imports torch (ONNX Runtime
issue #22070), yet the parts onnxfix needs, ``onnxblock`` (offline artifact building) and
``api`` (the on-device training API), import nothing of torch. So onnxfix registers the package
without running its ``__init__`` and imports just those subpackages, whether torch is installed or
not: that keeps start-up fast and works beside a broken torch too. If ``onnxruntime.training``
was already imported in full, that module is used as it is.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
import types

__all__ = [
    "onnxblock",
    "training_api",
    "checkpoint_schema",
    "return_freed_buffers",
    "ORT_MAX_IR_VERSION",
]

# ONNX Runtime 1.19.2 loads models up to IR 10; onnx >= 1.18 writes IR 11+ by default.
ORT_MAX_IR_VERSION = 10

# glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
# the buffers ONNX Runtime frees while loading a checkpoint land on the heap and stay in the
# process. A fixed threshold (glibc's default one, 128 KiB) returns them to the system.
# Measured on a 3 GB model (split checkpoint): load_checkpoint alone left 5.25 GB resident
# without it, 3.21 GB with it, and the self-test's forward and backward peaked at 8.7 GB
# against 6.7 GB, a little faster; on 1 GB (one-file checkpoint) no change.
_MMAP_THRESHOLD = 128 << 10
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def return_freed_buffers() -> None:
    """Fix this process's mmap threshold (see above) unless the user set one with glibc's
    ``MALLOC_MMAP_THRESHOLD_``. Called before every checkpoint load through the training API.

    Process-wide and lasting, as any mallopt call; C libraries without mallopt are left alone.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # glibc read the user's own at start-up
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no such C library function here
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


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
    """``onnxruntime.training.api``: CheckpointState, Module, Optimizer, LinearLRScheduler.

    ONNX Runtime's own log (warnings with colour escapes, written by C++ straight to stderr)
    is kept to errors unless onnxfix logs at DEBUG (``onnxfix -vv``): what a user must see,
    onnxfix reports in its own words.
    """
    import logging

    import onnxruntime

    _training_package()
    debug = logging.getLogger("onnxfix").isEnabledFor(logging.DEBUG)
    onnxruntime.set_default_logger_severity(1 if debug else 3)
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

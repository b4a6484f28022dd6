"""ONNX Runtime inference sessions for checking what a model computes."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto | str | Path, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session on ``model`` (a ModelProto or a file), warnings silenced; ``optimize=False``
    turns ONNX Runtime's graph optimizations off."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

"""The choices make-artifacts offers: losses, optimizers, and the target input each loss takes.

A module of its own, importing nothing, so that the CLI can offer them without importing onnx;
the training graph gets its loss in :mod:`onnxfix.training.build`.
"""

from __future__ import annotations

__all__ = ["LOSSES", "OPTIMIZERS", "TARGET_NAMES", "METRIC_LOSSES"]

LOSSES = ("mse", "cross-entropy", "bce", "l1", "none")
OPTIMIZERS = ("adamw", "sgd")
# The name of the extra training input that holds the target, by loss ('none' takes none).
TARGET_NAMES = {"mse": "target", "l1": "target", "bce": "target", "cross-entropy": "labels"}
# Losses that classify: train and evaluate report accuracy beside them.
METRIC_LOSSES = ("cross-entropy", "bce")

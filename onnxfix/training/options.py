"""The losses make-artifacts can put on a model's output, by their ``--loss`` names.

A module of its own so that the CLI can offer them without importing onnx; the training graph
gets its loss in :mod:`onnxfix.training.build`.
"""

__all__ = ["LOSSES"]

LOSSES = ("mse", "cross-entropy", "bce", "l1", "none")

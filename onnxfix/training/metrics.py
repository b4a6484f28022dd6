"""Loss and accuracy over batches: what train reports each epoch and evaluate reports once.

Artifacts of a classification loss (cross-entropy, bce) output the logits beside the loss
(``Manifest.metric_output``, added by make-artifacts); accuracy is computed from them: the
arg-max over axis 1 against the labels (cross-entropy), or the logit's sign against the
target rounded (bce). The same rules score an inference model's outputs in
:func:`score_outputs` (``evaluate MODEL``).
"""

from __future__ import annotations

import numpy as np

from onnxfix.training.layout import Manifest

__all__ = ["Metric", "evaluate_module", "correct", "score_outputs"]


def correct(
    loss: str, logits: np.ndarray, target: np.ndarray, ignore_index: int | None = None
) -> np.ndarray:
    """[correct, total] of ``logits`` against ``target`` for a classification ``loss``
    (labels equal to ``ignore_index`` left out)."""
    if loss == "cross-entropy":
        hit = np.argmax(logits, axis=1) == target
        if ignore_index is not None:
            hit = hit[target != ignore_index]
    else:  # bce on logits: positive means class 1
        hit = (logits > 0) == (np.asarray(target) > 0.5)
    return np.array([int(np.count_nonzero(hit)), int(hit.size)], np.int64)


class Metric:
    """The loss, and accuracy when the artifacts output the logits (``metric_output``)."""

    def __init__(self, module, manifest: Manifest) -> None:
        self.loss_kind = manifest.loss
        self.ignore_index = manifest.ignore_index
        self.module = module
        self.index: dict[bool, int | None] = {}
        for training in (True, False):
            module.train(training)
            names = list(module.output_names())
            metric = manifest.metric_output
            self.index[training] = names.index(metric) if metric in names else None

    @property
    def available(self) -> bool:
        return self.index[True] is not None

    def zero(self) -> np.ndarray:
        return np.zeros(2, np.int64)  # correct, total

    def loss(self, outputs) -> float:
        return float(np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs))

    def count(self, outputs, batch: list[np.ndarray]) -> np.ndarray:
        at = self.index[bool(self.module.training)]
        if at is None or not isinstance(outputs, (list, tuple)):
            return self.zero()
        return correct(
            self.loss_kind, np.asarray(outputs[at]), np.asarray(batch[-1]), self.ignore_index
        )

    def accuracy(self, counts: np.ndarray) -> float | None:
        return float(counts[0] / counts[1]) if self.available and counts[1] else None


def evaluate_module(
    module, metric: Metric, arrays: list[np.ndarray], batch_size: int, fixed_batch: int | None
) -> tuple[float, float | None]:
    """The mean loss (weighted by batch size) and accuracy over ``arrays``, in eval mode."""
    module.eval()
    count = len(arrays[0])
    steps = count // batch_size if fixed_batch else -(-count // batch_size)
    losses, weights, counts = [], [], metric.zero()
    for step in range(steps):
        batch = [a[step * batch_size : (step + 1) * batch_size] for a in arrays]
        outputs = module(*batch)
        losses.append(metric.loss(outputs))
        counts += metric.count(outputs, batch)
        weights.append(len(batch[0]))
    loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    return loss, metric.accuracy(counts)


def score_outputs(
    loss: str, output: np.ndarray, target: np.ndarray, *, probabilities: bool
) -> tuple[float, float | None]:
    """The mean loss, and accuracy for classification, of an inference model's ``output``.

    ``probabilities``: the output comes from a Softmax (cross-entropy) or Sigmoid (bce), so it
    is scored as probabilities, not logits. Computed in float64 as onnxblock's losses define
    them: mean squared / absolute error, mean negative log-likelihood, mean binary
    cross-entropy.
    """
    y = np.asarray(output, np.float64)
    t = np.asarray(target)
    if loss == "mse":
        return float(np.mean((y - t) ** 2)), None
    if loss == "l1":
        return float(np.mean(np.abs(y - t))), None
    if loss == "cross-entropy":
        if probabilities:
            log_p = np.log(np.clip(y, 1e-45, None))
        else:
            shifted = y - y.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        picked = np.take_along_axis(log_p, np.expand_dims(t.astype(np.int64), 1), axis=1)
        hits = correct(loss, y if not probabilities else log_p, t)
        return float(-picked.mean()), float(hits[0] / hits[1])
    # bce
    t = t.astype(np.float64)
    if probabilities:
        p = np.clip(y, 1e-12, 1 - 1e-12)
        value = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        hits = correct(loss, np.log(p) - np.log(1 - p), t)
    else:
        value = np.maximum(y, 0) - y * t + np.log1p(np.exp(-np.abs(y)))
        hits = correct(loss, y, t)
    return float(value.mean()), float(hits[0] / hits[1])

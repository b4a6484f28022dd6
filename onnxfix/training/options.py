"""The choices make-artifacts offers: losses, optimizers, and the target input each loss takes.

A module of its own, importing only the standard library, so that the CLI can offer them
without importing onnx;
the training graph gets its loss in :mod:`onnxfix.training.build`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LOSSES", "OPTIMIZERS", "TARGET_NAMES", "METRIC_LOSSES", "OptimizerSettings"]

LOSSES = ("mse", "cross-entropy", "bce", "l1", "none")
OPTIMIZERS = ("adamw", "torch-adamw", "sgd")
# The name of the extra training input that holds the target, by loss ('none' takes none).
TARGET_NAMES = {"mse": "target", "l1": "target", "bce": "target", "cross-entropy": "labels"}
# Losses that classify: train and evaluate report accuracy beside them.
METRIC_LOSSES = ("cross-entropy", "bce")


@dataclass(frozen=True)
class OptimizerSettings:
    """What the optimizer model is built with (ONNX Runtime keeps these in the model, not in
    the checkpoint): AdamW's form, betas, eps and weight decay; nothing for SGD.

    ``adamw`` is ONNX Runtime's own (onnxblock's defaults: the Hugging Face form, eps 1e-6, no
    weight decay). ``torch-adamw`` is ``torch.optim.AdamW``: its update rule (ORT's adam_mode
    0: decay first, eps added to the bias-corrected sqrt(v)) and its defaults (eps 1e-8,
    weight decay 0.01).
    """

    optimizer: str
    form: str | None = None  # "hf" or "torch" (AdamW only)
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float | None = None

    @classmethod
    def of(
        cls,
        optimizer: str,
        *,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
    ) -> OptimizerSettings:
        """The settings of ``optimizer`` with the given values in place of its defaults;
        ValueError (with the reason) for a value it cannot take."""
        if optimizer == "sgd":
            given = [
                n
                for n, v in (("betas", betas), ("eps", eps), ("weight_decay", weight_decay))
                if v is not None
            ]
            if given:
                raise ValueError(
                    f"{given[0]} is an AdamW setting; SGD takes only the learning rate"
                )
            return cls("sgd")
        form, default_eps, default_decay = (
            ("torch", 1e-8, 0.01) if optimizer == "torch-adamw" else ("hf", 1e-6, 0.0)
        )
        pair = tuple(betas) if betas is not None else (0.9, 0.999)
        if len(pair) != 2 or not all(_finite(b) and 0 <= b < 1 for b in pair):
            raise ValueError(
                f"betas {list(pair)!r} must be two numbers from 0 to below 1, e.g. 0.9,0.999"
            )
        eps = default_eps if eps is None else eps
        if not (_finite(eps) and eps > 0):
            raise ValueError(f"eps {eps!r} must be a number above 0, e.g. 1e-8")
        weight_decay = default_decay if weight_decay is None else weight_decay
        if not (_finite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay {weight_decay!r} must be a number, 0 or more")
        return cls(
            optimizer, form, (float(pair[0]), float(pair[1])), float(eps), float(weight_decay)
        )

    def to_json(self) -> dict:
        return {
            "optimizer": self.optimizer,
            "form": self.form,
            "betas": list(self.betas) if self.betas is not None else None,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    @classmethod
    def from_json(cls, obj: dict) -> OptimizerSettings:
        betas = obj.get("betas")
        return cls(
            optimizer=str(obj["optimizer"]),
            form=obj.get("form"),
            betas=(float(betas[0]), float(betas[1])) if betas is not None else None,
            eps=float(obj["eps"]) if obj.get("eps") is not None else None,
            weight_decay=float(obj["weight_decay"])
            if obj.get("weight_decay") is not None
            else None,
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

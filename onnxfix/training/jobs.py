"""The records that cross the process boundary between make-artifacts and its children.

:class:`BuildJob` and :class:`SelfTestJob` go to the child (:mod:`onnxfix.training.isolation`),
:class:`SelfTestResult` comes back (the build returns a
:class:`~onnxfix.training.layout.Manifest`). They become JSON only at that edge: the parent
calls ``to_json()`` on what it sends and ``from_json()`` on what it gets, the child the reverse.
Light: the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["BuildJob", "SelfTestJob", "SelfTestResult", "SelfTestSkipped"]


@dataclass(frozen=True)
class BuildJob:
    """What the build child makes: the artifacts of ``model`` in the folder ``out``."""

    model: str  # absolute path of the model file
    out: str  # absolute path of the (staging) folder to write into
    loss: str
    optimizer: str
    loss_input: str | None = None
    freeze: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    extra_outputs: tuple[str, ...] = ()
    ort_format: bool = False
    nominal_checkpoint: bool = False
    strict: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    split: bool = False  # train the head alone; the frozen prefix becomes prefix_model.onnx
    # OptimizerSettings.to_json(): AdamW's form, betas, eps, weight decay (None: the defaults)
    optimizer_settings: dict[str, Any] | None = None
    ignore_index: int | None = None  # cross-entropy: the label of padding, left out of the loss

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BuildJob:
        return cls(
            model=obj["model"],
            out=obj["out"],
            loss=obj["loss"],
            optimizer=obj["optimizer"],
            loss_input=obj["loss_input"],
            freeze=tuple(obj["freeze"]),
            train=tuple(obj["train"]),
            extra_outputs=tuple(obj["extra_outputs"]),
            ort_format=bool(obj["ort_format"]),
            nominal_checkpoint=bool(obj["nominal_checkpoint"]),
            strict=bool(obj["strict"]),
            input_shapes={k: tuple(v) for k, v in obj["input_shapes"].items()},
            split=bool(obj.get("split", False)),
            optimizer_settings=obj.get("optimizer_settings"),
            ignore_index=obj.get("ignore_index"),
        )


@dataclass(frozen=True)
class SelfTestJob:
    """One training step on the artifacts in ``artifacts``; without the optimizer step when
    its state would not fit (make-artifacts decides)."""

    artifacts: str
    optimizer_step: bool = True
    data: str | None = None  # the user's data to step on (--self-test-data), else random batches

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SelfTestJob:
        return cls(
            artifacts=obj["artifacts"],
            optimizer_step=bool(obj["optimizer_step"]),
            data=obj.get("data"),
        )


@dataclass(frozen=True)
class SelfTestResult:
    """A self-test that ran: the step's loss, and what it checked."""

    loss: float
    zero_gradient: tuple[str, ...]  # trainable tensors whose gradient was exactly 0
    frozen_checked: int  # frozen tensors found bit-identical after the step
    batch_scale: float  # the width of the random batch that gave gradients
    optimizer_step: bool  # False: forward and backward only
    note: str | None = None  # why the optimizer step was left out, when it was
    # every gradient was 0 on the batches tried: not broken, but to check (saturation)
    warning: str | None = None

    def with_note(self, note: str) -> SelfTestResult:
        return replace(self, note=note)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SelfTestResult:
        return cls(
            loss=float(obj["loss"]),
            zero_gradient=tuple(obj["zero_gradient"]),
            frozen_checked=int(obj["frozen_checked"]),
            batch_scale=float(obj["batch_scale"]),
            optimizer_step=bool(obj["optimizer_step"]),
            note=obj.get("note"),
            warning=obj.get("warning"),
        )


@dataclass(frozen=True)
class SelfTestSkipped:
    """A self-test that did not run, and why (the machine lacks the memory)."""

    reason: str

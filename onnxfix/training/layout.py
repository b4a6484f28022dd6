"""The artifacts folder: its file names and :class:`Manifest`, the record in ``onnxfix.json``.

Every command that reads artifacts (train, export, verify, the self-test) takes the names and
the manifest from here, and only here is the manifest turned into JSON and back. Light: it
imports the standard library and :mod:`onnxfix.provenance`'s record type only when reading.

A manifest written by onnxfix 0.1.0 reads the same: this version writes the same keys, plus
``split`` for artifacts made with ``--split`` and ``channel_parts`` for tensors of which only
some channels are fixed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from onnxfix.errors import ArtifactsError
from onnxfix.training.options import OptimizerSettings

if TYPE_CHECKING:
    from onnxfix.channels import ChannelParts
    from onnxfix.provenance import Provenance

__all__ = [
    "CHECKPOINT_MANIFEST_KEY",
    "checkpoint_parts",
    "TRAINING_MODEL",
    "EVAL_MODEL",
    "OPTIMIZER_MODEL",
    "CHECKPOINT",
    "NOMINAL_CHECKPOINT",
    "INFERENCE_MODEL",
    "MANIFEST",
    "REQUIRED_OPERATORS",
    "ARTIFACT_FILES",
    "is_artifact_file",
    "ArtifactsLayout",
    "TensorSpec",
    "ProbeShapes",
    "SplitRecord",
    "Manifest",
    "PREFIX_MODEL",
    "FEATURES",
    "is_feature_file",
    "load_manifest",
]

TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
NOMINAL_CHECKPOINT = "nominal_checkpoint"
INFERENCE_MODEL = "inference_model.onnx"  # the normalised model; export puts trained values in it
PREFIX_MODEL = "prefix_model.onnx"  # --split: the frozen prefix, a plain inference model
FEATURES = "features"  # --split: train's cache of the prefix's outputs, one .npy per cut tensor
MANIFEST = "onnxfix.json"
# --ort-format: the operators of the three .ort models, for ORT's minimal build
REQUIRED_OPERATORS = "required_operators.config"
CHECKPOINT_MANIFEST_KEY = "onnxfix.manifest"  # the checkpoint property with the manifest's core
ARTIFACT_FILES = (
    TRAINING_MODEL,
    EVAL_MODEL,
    OPTIMIZER_MODEL,
    CHECKPOINT,
    INFERENCE_MODEL,
    MANIFEST,
    REQUIRED_OPERATORS,
)


def is_artifact_file(name: str) -> bool:
    """Whether make-artifacts writes files of this name: the ARTIFACT_FILES, the nominal
    checkpoint, the .ort models, and a ``.data`` file beside any of them. make-artifacts
    --force replaces only a folder of these; export and train never write over one."""
    stem = name[: -len(".data")] if name.endswith(".data") else name
    models = (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL)
    ort = {m[: -len(".onnx")] + ".ort" for m in models}
    return (
        stem in ARTIFACT_FILES
        or stem in (NOMINAL_CHECKPOINT, PREFIX_MODEL)
        or stem in ort
        or _is_saved_checkpoint(stem)
    )


def _is_saved_checkpoint(name: str) -> bool:
    """train's checkpoint.best and checkpoint.epoch<N> (--keep-best, --save-every-epoch)."""
    head, _, tail = name.partition(".")
    return head == CHECKPOINT and (
        tail == "best" or (tail.startswith("epoch") and tail[5:].isdigit())
    )


def is_feature_file(name: str) -> bool:
    """Whether train --split writes files of this name into FEATURES: ``<key>.<n>.npy``."""
    parts = name.split(".")
    return (
        len(parts) == 3
        and len(parts[0]) == 32
        and all(c in "0123456789abcdef" for c in parts[0])
        and parts[1].isdigit()
        and parts[2] == "npy"
    )


@dataclass(frozen=True)
class ArtifactsLayout:
    """The paths of one artifacts folder."""

    root: Path

    @property
    def training_model(self) -> Path:
        return self.root / TRAINING_MODEL

    @property
    def eval_model(self) -> Path:
        return self.root / EVAL_MODEL

    @property
    def optimizer_model(self) -> Path:
        return self.root / OPTIMIZER_MODEL

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def nominal_checkpoint(self) -> Path:
        return self.root / NOMINAL_CHECKPOINT

    @property
    def inference_model(self) -> Path:
        return self.root / INFERENCE_MODEL

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def prefix_model(self) -> Path:
        return self.root / PREFIX_MODEL

    @property
    def features(self) -> Path:
        return self.root / FEATURES


# A dim: a size, a named dim, or None when unknown.
Dim = Union[int, str, None]


@dataclass(frozen=True)
class TensorSpec:
    """A model input, output or target: name, shape (named dims kept) and dtype name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TensorSpec:
        shape, dtype = obj["shape"], obj["dtype"]
        if not isinstance(shape, list) or not all(
            d is None or isinstance(d, str) or (type(d) is int and -(1 << 63) <= d < 1 << 63)
            for d in shape
        ):
            raise ValueError(f"shape {shape!r} is not a list of sizes and names")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
        return cls(str(obj["name"]), tuple(shape), dtype)


# The element types a model input or target can have in a manifest (numpy's names).
_DTYPES = frozenset(
    "float32 float16 bfloat16 float64 int8 uint8 int16 uint16 int32 uint32 int64 uint64 "
    "bool".split()
)


@dataclass(frozen=True)
class ProbeShapes:
    """The concrete shapes the build ran the model with: the self-test's batch uses them."""

    inputs: tuple[tuple[int, ...], ...]  # in the order of Manifest.inputs
    loss_input: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [list(s) for s in self.inputs], "loss_input": list(self.loss_input)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ProbeShapes:
        return cls(
            tuple(tuple(int(d) for d in s) for s in obj["inputs"]),
            tuple(int(d) for d in obj["loss_input"]),
        )


@dataclass(frozen=True)
class SplitRecord:
    """Artifacts made with ``--split``: the training graphs are the head's, whose inputs are
    the cut tensors (computed by PREFIX_MODEL) and the passed-through model inputs."""

    model_inputs: tuple[TensorSpec, ...]  # what the data holds: the whole model's inputs
    cut: tuple[TensorSpec, ...]  # PREFIX_MODEL's outputs, the head's first inputs
    passthrough: tuple[str, ...]  # model inputs the head reads as they are
    prefix_fixed: tuple[str, ...]  # fixed tensors in the prefix (not in the checkpoint)
    prefix_parameters: int  # parameter values in the prefix, and in the whole model
    total_parameters: int
    prefix_macs: int  # multiply-accumulates of Conv/Gemm/MatMul, static shapes
    total_macs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model_inputs": [i.to_json() for i in self.model_inputs],
            "cut": [c.to_json() for c in self.cut],
            "passthrough": list(self.passthrough),
            "prefix_fixed": list(self.prefix_fixed),
            "prefix_parameters": self.prefix_parameters,
            "total_parameters": self.total_parameters,
            "prefix_macs": self.prefix_macs,
            "total_macs": self.total_macs,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SplitRecord:
        return cls(
            model_inputs=tuple(TensorSpec.from_json(i) for i in obj["model_inputs"]),
            cut=tuple(TensorSpec.from_json(c) for c in obj["cut"]),
            passthrough=_names(obj["passthrough"]),
            prefix_fixed=_names(obj["prefix_fixed"]),
            prefix_parameters=int(obj["prefix_parameters"]),
            total_parameters=int(obj["total_parameters"]),
            prefix_macs=int(obj["prefix_macs"]),
            total_macs=int(obj["total_macs"]),
        )


@dataclass(frozen=True)
class Manifest:
    """What ``onnxfix.json`` records: versions, inputs, target, loss, what trains, provenance."""

    onnxfix_version: str
    onnxruntime_version: str
    onnx_version: str
    source_model: str  # the file name make-artifacts was given
    inputs: tuple[TensorSpec, ...]  # the model inputs to feed, in the training graph's order
    outputs: tuple[TensorSpec, ...]  # the inference model's outputs
    target: TensorSpec | None  # the loss's second input; None for --loss none
    loss: str
    loss_input: str  # the tensor the loss reads
    optimizer: str
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]  # in the checkpoint with requires_grad=False
    fixed_kernels: dict[str, str]  # fixed tensor -> sha256
    excluded: dict[str, str]  # float initializers left out of training -> why
    blocked: dict[str, str]  # frozen because a node blocks their gradient -> which
    rewrites: tuple[str, ...]  # training-graph rewrites, one line each
    trainable_bytes: int
    frozen_bytes: int
    probe: ProbeShapes
    provenance: Provenance
    notes: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()  # normalisations applied to both graphs
    split: SplitRecord | None = None  # made with --split (absent from older manifests)
    # tensors with some channels fixed, trained as two parameters (absent from older manifests)
    channel_parts: dict[str, ChannelParts] = field(default_factory=dict)
    # the training and eval models' last output, which accuracy is computed from (cross-entropy
    # and bce: the logits); None for other losses and older artifacts
    metric_output: str | None = None
    # what the optimizer model was built with (absent from older manifests)
    optimizer_settings: OptimizerSettings | None = None
    ignore_index: int | None = None  # cross-entropy: labels of this value count for nothing
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer onnxfix wrote

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model's inputs fix (axis 0 of a static size), or None."""
        return next(
            (d for s in self.inputs for d in s.shape[:1] if isinstance(d, int) and d > 0), None
        )

    @property
    def feeds(self) -> tuple[TensorSpec, ...]:
        """What a training step takes, in order: the inputs, then the target if any."""
        return self.inputs + ((self.target,) if self.target is not None else ())

    def to_json(self) -> dict[str, Any]:
        from onnxfix.provenance import FixedTensor

        provenance: Mapping[str, FixedTensor] = self.provenance
        return {
            "onnxfix_version": self.onnxfix_version,
            "onnxruntime_version": self.onnxruntime_version,
            "onnx_version": self.onnx_version,
            "source_model": self.source_model,
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": [o.to_json() for o in self.outputs],
            "target": self.target.to_json() if self.target is not None else None,
            "loss": self.loss,
            "loss_input": self.loss_input,
            "optimizer": self.optimizer,
            "trainable": list(self.trainable),
            "frozen": list(self.frozen),
            "fixed_kernels": dict(self.fixed_kernels),
            "excluded": dict(self.excluded),
            "blocked": dict(self.blocked),
            "rewrites": list(self.rewrites),
            "trainable_bytes": self.trainable_bytes,
            "frozen_bytes": self.frozen_bytes,
            "notes": list(self.notes),
            "probe": self.probe.to_json(),
            "changes": list(self.changes),
            "provenance": {name: record.to_json() for name, record in provenance.items()},
            **({"split": self.split.to_json()} if self.split is not None else {}),
            **(
                {"channel_parts": {n: p.to_json() for n, p in self.channel_parts.items()}}
                if self.channel_parts
                else {}
            ),
            **({"metric_output": self.metric_output} if self.metric_output is not None else {}),
            **({"ignore_index": self.ignore_index} if self.ignore_index is not None else {}),
            **(
                {"optimizer_settings": self.optimizer_settings.to_json()}
                if self.optimizer_settings is not None
                else {}
            ),
            **self.extra,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], *, source: str) -> Manifest:
        """The manifest in ``obj``; ``source`` names it in the error when it is malformed."""
        from onnxfix.provenance import FixedTensor

        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        try:
            target = obj["target"]
            return cls(
                onnxfix_version=str(obj["onnxfix_version"]),
                onnxruntime_version=str(obj["onnxruntime_version"]),
                onnx_version=str(obj["onnx_version"]),
                source_model=str(obj["source_model"]),
                inputs=tuple(TensorSpec.from_json(i) for i in obj["inputs"]),
                outputs=tuple(TensorSpec.from_json(o) for o in obj["outputs"]),
                target=TensorSpec.from_json(target) if target is not None else None,
                loss=str(obj["loss"]),
                loss_input=str(obj["loss_input"]),
                optimizer=str(obj["optimizer"]),
                trainable=_names(obj["trainable"]),
                frozen=_names(obj["frozen"]),
                fixed_kernels=_texts(obj["fixed_kernels"]),
                excluded=_texts(obj.get("excluded", {})),
                blocked=_texts(obj.get("blocked", {})),
                rewrites=_names(obj.get("rewrites", [])),
                trainable_bytes=int(obj["trainable_bytes"]),
                frozen_bytes=int(obj["frozen_bytes"]),
                probe=ProbeShapes.from_json(obj["probe"]),
                provenance={
                    name: FixedTensor.from_json(name, record, source=source)
                    for name, record in dict(obj.get("provenance") or {}).items()
                },
                notes=_names(obj.get("notes", [])),
                changes=_names(obj.get("changes", [])),
                split=SplitRecord.from_json(obj["split"]) if obj.get("split") else None,
                channel_parts=_channel_parts(obj.get("channel_parts") or {}),
                metric_output=(
                    str(obj["metric_output"]) if obj.get("metric_output") is not None else None
                ),
                ignore_index=(
                    int(obj["ignore_index"]) if obj.get("ignore_index") is not None else None
                ),
                optimizer_settings=(
                    OptimizerSettings.from_json(obj["optimizer_settings"])
                    if obj.get("optimizer_settings")
                    else None
                ),
                extra={k: v for k, v in obj.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            what = f"lacks {e}" if isinstance(e, KeyError) else f"is malformed ({e})"
            raise ArtifactsError(
                f"{source} {what}; make the artifacts again with 'onnxfix make-artifacts'"
            ) from e


def _channel_parts(obj: Mapping[str, Any]) -> dict[str, ChannelParts]:
    from onnxfix.channels import ChannelParts

    if not isinstance(obj, dict):
        raise TypeError(f"expected an object, found {type(obj).__name__}")
    return {str(name): ChannelParts.from_json(str(name), part) for name, part in obj.items()}


def checkpoint_parts(properties: Mapping[str, Any], *, source: str) -> dict[str, ChannelParts]:
    """The channel parts a checkpoint's ``onnxfix.manifest`` property records ({} for none)."""
    text = properties.get(CHECKPOINT_MANIFEST_KEY)
    if text is None:
        return {}
    try:
        obj = json.loads(text)
        return _channel_parts(obj.get("channel_parts") or {} if isinstance(obj, dict) else {})
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
        raise ArtifactsError(
            f"{source}: its {CHECKPOINT_MANIFEST_KEY!r} property is malformed ({e}); make the "
            "artifacts again with 'onnxfix make-artifacts'"
        ) from e


def _names(values: Sequence[Any]) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise TypeError(f"expected a list, found {type(values).__name__}")
    return tuple(str(v) for v in values)


def _texts(values: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(values, dict):
        raise TypeError(f"expected an object, found {type(values).__name__}")
    return {str(k): str(v) for k, v in values.items()}


def load_manifest(artifacts: str | Path) -> Manifest:
    """The manifest of the artifacts folder ``artifacts``, checked."""
    path = Path(artifacts) / MANIFEST
    if not path.is_file():
        raise ArtifactsError(
            f"{str(artifacts)!r} holds no {MANIFEST}; point at a folder made by 'onnxfix make-artifacts'"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ArtifactsError(
            f"{str(path)!r} is not a readable JSON file ({e}); make the artifacts again with "
            "'onnxfix make-artifacts'"
        ) from e
    if not isinstance(obj, dict):
        raise ArtifactsError(
            f"{str(path)!r} holds no JSON object; make the artifacts again with "
            "'onnxfix make-artifacts'"
        )
    return Manifest.from_json(obj, source=repr(str(path)))


def save_manifest(manifest: Manifest, artifacts: Path) -> None:
    """Write ``onnxfix.json`` into ``artifacts`` (a staging folder: it is renamed as a whole)."""
    (artifacts / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")

"""Decide which parameters train and which stay frozen (``freeze_plan``).

Frozen: the tensors onnxfix fixed (provenance), plus ``--freeze`` patterns. Trainable: every
other floating-point initializer that the loss depends on through an input the op can
differentiate, optionally restricted by ``--train`` patterns. BatchNorm running statistics,
Resize scales, shapes, indices and the like never train; parameters the loss does not depend on
are reported and left out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import onnx

from .convs import iter_graphs
from .errors import ArtifactsError

__all__ = ["FreezePlan", "freeze_plan", "NON_DIFFERENTIABLE_INPUTS"]

# Input slots whose values no gradient flows to (ONNX operator specs: "non-differentiable"
# inputs, or ones ORT's gradient builders ignore). Keys: op type; values: input indices.
NON_DIFFERENTIABLE_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),  # running mean / variance
    "Resize": frozenset({1, 2, 3}),  # roi, scales, sizes
    "Upsample": frozenset({1}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "Where": frozenset({0}),
    "Dropout": frozenset({1, 2}),
    "Clip": frozenset({1, 2}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "OneHot": frozenset({0, 1, 2}),
    "Range": frozenset({0, 1, 2}),
    "ConstantOfShape": frozenset({0}),
    "LSTM": frozenset({4, 5, 6}),  # sequence_lens and initial states are data, not weights
    "GRU": frozenset({4, 5}),
    "RNN": frozenset({4, 5}),
}
# Ops through which nothing differentiable flows at all.
NON_DIFFERENTIABLE_OPS = frozenset(
    {
        "Shape",
        "Size",
        "ArgMax",
        "ArgMin",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "And",
        "Or",
        "Xor",
        "NonZero",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "ConstantOfShape",
        "RandomNormalLike",
        "RandomUniformLike",
        "EyeLike",
    }
)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT}  # ORT training optimisers update float32 parameters


@dataclass(frozen=True)
class FreezePlan:
    trainable: list[str]
    frozen: list[str]  # in the checkpoint with requires_grad=False
    fixed: list[str]  # the subset of frozen that onnxfix fixed (provenance)
    excluded: dict[str, str] = field(default_factory=dict)  # float initializers left out: why


def _patterns_match(patterns: Iterable[str], names: Mapping[str, set[str]], what: str) -> set[str]:
    """Parameters matched by glob ``patterns`` over parameter names or their consumers' names."""
    chosen: set[str] = set()
    for pattern in patterns:
        hit = {
            p
            for p, layers in names.items()
            if fnmatch.fnmatchcase(p, pattern)
            or any(fnmatch.fnmatchcase(n, pattern) for n in layers)
        }
        if not hit:
            raise ArtifactsError(
                f"{what} {pattern!r} matches no parameter or layer; parameters: "
                f"{', '.join(sorted(names)) or 'none'}"
            )
        chosen |= hit
    return chosen


def differentiable_sources(model: onnx.ModelProto, outputs: Iterable[str]) -> set[str]:
    """Every tensor that ``outputs`` depend on through differentiable inputs (main graph)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output if o}
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None or node.op_type in NON_DIFFERENTIABLE_OPS:
            continue
        skip = NON_DIFFERENTIABLE_INPUTS.get(node.op_type, frozenset())
        stack.extend(i for k, i in enumerate(node.input) if i and k not in skip)
        for attr in node.attribute:  # subgraphs: outer-scope names they read
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                for _, g in iter_graphs(sub):
                    stack.extend(i for n in g.node for i in n.input if i)
    return seen


def freeze_plan(
    model: onnx.ModelProto,
    loss_inputs: list[str],
    fixed: Iterable[str],
    *,
    freeze: Iterable[str] = (),
    train: Iterable[str] = (),
) -> FreezePlan:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, set()).add(node.name)
    fixed = list(fixed)
    missing = [f for f in fixed if f not in initializers]
    if missing:
        raise ArtifactsError(
            f"the model's onnxfix.fixed_kernels record names {', '.join(map(repr, missing))}, which "
            "the model does not hold as initializers; re-run set-kernel on the original model"
        )
    reached = differentiable_sources(model, loss_inputs)
    floats = {n for n, t in initializers.items() if t.data_type in _FLOAT_TYPES}
    excluded: dict[str, str] = {}
    for name in sorted(floats - reached):
        used = consumers.get(name, set())
        excluded[name] = (
            "the loss does not depend on it" if not used else "it feeds no differentiable input"
        )
    candidates = {n for n in floats & reached if n not in fixed}
    named = {n: consumers.get(n, set()) for n in floats | set(fixed)}
    frozen_extra = _patterns_match(freeze, named, "--freeze")
    trainable = candidates - frozen_extra
    train = list(train)
    if train:
        wanted = _patterns_match(train, named, "--train")
        held = trainable - wanted
        trainable &= wanted
        frozen_extra |= held
    if not trainable:
        raise ArtifactsError(
            "nothing would train: every parameter the loss depends on is fixed or frozen"
            + (" (check --train and --freeze)" if train or freeze else "")
        )
    frozen = sorted((set(fixed) | frozen_extra) - trainable)
    for name in list(excluded):
        if name in frozen_extra:
            del excluded[name]
    return FreezePlan(
        trainable=sorted(trainable, key=list(initializers).index),
        frozen=sorted(frozen, key=list(initializers).index),
        fixed=[f for f in fixed],
        excluded=excluded,
    )

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

from onnxfix._proto import DEFAULT_DOMAINS, attribute, iter_graphs, producers
from onnxfix.errors import ArtifactsError, param
from onnxfix.kernels.layers import module_paths
from onnxfix.training import ort_facts

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


def gradient_blocker(node: onnx.NodeProto) -> str | None:
    """Why no gradient can flow back through ``node`` on the CPU in ONNX Runtime 1.19.2, or None.

    Facts from onnxfix.training.ort_facts (its registry and the probe in docs/ort-gradients.md).
    """
    op = node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        return f"{node.domain}.{op} is a custom op with no gradient in ONNX Runtime training"
    if op in ort_facts.CPU_MISSING_GRADIENT_KERNEL:
        grad = ort_facts.CPU_MISSING_GRADIENT_KERNEL[op]
        return f"{op}'s gradient ({grad}) has no CPU kernel in ONNX Runtime {ort_facts.ORT_TRAINING_VERSION}"
    if op in ("LSTM", "GRU"):
        direction = attribute(node, "direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction != "forward":
            return f"ONNX Runtime {ort_facts.ORT_TRAINING_VERSION} trains only forward {op}s, not {direction}"
        return None
    if op == "Pad":
        mode = attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ort_facts.PAD_GRAD_MODES:
            return f"ONNX Runtime's Pad gradient supports constant mode only, not {mode}"
        return None
    if op in ort_facts.GRADIENT_OPS or op in ort_facts.TRAINING_REPLACEMENTS:
        return None
    return f"ONNX Runtime {ort_facts.ORT_TRAINING_VERSION} has no gradient for {op}"


@dataclass(frozen=True)
class FreezePlan:
    trainable: list[str]
    frozen: list[str]  # in the checkpoint with requires_grad=False
    fixed: list[str]  # the subset of frozen that onnxfix fixed (provenance)
    excluded: dict[str, str] = field(default_factory=dict)  # float initializers left out: why
    blocked: dict[str, str] = field(default_factory=dict)  # frozen because a node blocks: which


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
                f"{param(what)} {pattern!r} matches no parameter or layer; parameters: "
                f"{', '.join(sorted(names)) or 'none'}"
            )
        chosen |= hit
    return chosen


def differentiable_sources(
    model: onnx.ModelProto,
    outputs: Iterable[str],
    blocked: dict[str, str] | None = None,
) -> set[str]:
    """Every tensor that ``outputs`` depend on through differentiable inputs (main graph).

    With ``blocked`` (a dict to fill), the walk stops at nodes no gradient flows through on
    the CPU and records them: node name -> reason.
    """
    made_by = producers(model.graph)
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = made_by.get(name)
        if node is None or node.op_type in NON_DIFFERENTIABLE_OPS:
            continue
        if blocked is not None:
            reason = gradient_blocker(node)
            if reason is not None:
                blocked[node.name or node.output[0]] = (
                    f"{node.op_type} node {node.name or node.output[0]!r}: {reason}"
                )
                continue
        stack.extend(_sources(node))
    return seen


def _sources(node: onnx.NodeProto) -> list[str]:
    """The names a gradient could flow to from ``node``: its differentiable inputs and every
    outer-scope name its subgraphs (If/Loop/Scan bodies) read."""
    skip = NON_DIFFERENTIABLE_INPUTS.get(node.op_type, frozenset())
    names = [i for k, i in enumerate(node.input) if i and k not in skip]
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            for _, g in iter_graphs(sub):
                names.extend(i for n in g.node for i in n.input if i)
    return names


def freeze_plan(
    model: onnx.ModelProto,
    loss_inputs: list[str],
    fixed: Iterable[str],
    *,
    freeze: Iterable[str] = (),
    train: Iterable[str] = (),
    strict: bool = False,
    aliases: Mapping[str, str] | None = None,
) -> FreezePlan:
    """Which float initializers of ``model`` train for a loss on ``loss_inputs``.

    ``aliases`` maps a parameter that is part of a model tensor (:mod:`onnxfix.training.parts`)
    to that tensor: the patterns match it by the tensor's name and readers too.

    Check the fixed tensors exist, walk back from the loss to what a gradient reaches (and
    what a node with no CPU gradient blocks), apply the ``freeze`` and ``train`` patterns, and
    refuse a plan in which nothing trains.
    """
    graph = model.graph
    order = {t.name: k for k, t in reversed(list(enumerate(graph.initializer)))}  # first wins
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        # A parameter is matched by its readers' names and PyTorch module paths too.
        names = {node.name, *module_paths(node, "")}
        for i in node.input:
            consumers.setdefault(i, set()).update(names)
    fixed = list(fixed)
    freeze, train = list(freeze), list(train)  # each read twice: generators would run dry
    _check_fixed_exist(fixed, order)
    floats = {t.name for t in graph.initializer if t.data_type in _FLOAT_TYPES}
    reached, everything, blocked = _reach(model, loss_inputs, floats - set(fixed), strict)
    excluded = {
        name: "the loss does not depend on it"
        if not consumers.get(name)
        else "it feeds no differentiable input"
        for name in sorted(floats - everything)
    }
    named = {n: consumers.get(n, set()) for n in floats | set(fixed)}
    for part, whole in (aliases or {}).items():
        if part in named:
            named[part] = named[part] | {whole} | consumers.get(whole, set())
    candidates = {n for n in floats & reached if n not in fixed}
    trainable, frozen_extra = _apply_patterns(candidates, named, freeze, train)
    if not trainable:
        _refuse_nothing_trains(fixed, frozen_extra, blocked, bool(train or freeze))
    frozen = (set(fixed) | frozen_extra | set(blocked)) - trainable
    return FreezePlan(
        trainable=sorted(trainable, key=order.__getitem__),
        frozen=sorted(frozen, key=order.__getitem__),
        fixed=fixed,
        excluded={k: v for k, v in excluded.items() if k not in frozen_extra},
        blocked={k: v for k, v in blocked.items() if k not in trainable},
    )


def _check_fixed_exist(fixed: list[str], initializers: Mapping[str, int]) -> None:
    missing = [f for f in fixed if f not in initializers]
    if missing:
        raise ArtifactsError(
            f"the model's onnxfix.fixed_kernels record names {', '.join(map(repr, missing))}, which "
            "the model does not hold as initializers; re-run set-kernel on the original model"
        )


def _reach(
    model: onnx.ModelProto, loss_inputs: list[str], candidates: set[str], strict: bool
) -> tuple[set[str], set[str], dict[str, str]]:
    """What a gradient reaches from the loss on the CPU, what the loss depends on at all, and
    the candidates that only a blocking node connects to the loss (with that node's reason)."""
    blockers: dict[str, str] = {}
    reached = differentiable_sources(model, loss_inputs, blockers)
    everything = differentiable_sources(model, loss_inputs)
    blocked = _blocked_parameters(model, blockers, (everything - reached) & candidates)
    if blocked and strict:
        first = next(iter(blocked.values()))
        raise ArtifactsError(
            f"{param('strict', 'strict=True')}: {len(blocked)} parameters cannot train on the "
            f"CPU ({', '.join(sorted(blocked)[:5])}{'...' if len(blocked) > 5 else ''}), "
            f"blocked by {first}"
        )
    return reached, everything, blocked


def _apply_patterns(
    candidates: set[str], named: Mapping[str, set[str]], freeze: list[str], train: list[str]
) -> tuple[set[str], set[str]]:
    """The candidates that train under the ``freeze`` and ``train`` patterns, and the
    parameters those patterns freeze."""
    frozen_extra = _patterns_match(freeze, named, "freeze")
    trainable = candidates - frozen_extra
    if train:
        wanted = _patterns_match(train, named, "train")
        frozen_extra |= trainable - wanted
        trainable &= wanted
    return trainable, frozen_extra


def _refuse_nothing_trains(
    fixed: list[str], frozen_extra: set[str], blocked: dict[str, str], patterns: bool
) -> None:
    kept = sorted(set(fixed) | frozen_extra | set(blocked))
    why = f" (check {param('train')} and {param('freeze')})" if patterns else ""
    if blocked and not why:
        why = f"; some are blocked by {next(iter(blocked.values()))}"
    raise ArtifactsError(
        f"nothing would train: the loss depends only on fixed or frozen parameters "
        f"({', '.join(kept[:6])}{'...' if len(kept) > 6 else ''}){why}"
    )


def _blocked_parameters(
    model: onnx.ModelProto, blockers: dict[str, str], candidates: set[str]
) -> dict[str, str]:
    """Each parameter that only a blocking node connects to the loss, with that node's reason."""
    if not candidates:
        return {}
    by_name = {n.name or n.output[0]: n for n in model.graph.node}
    result: dict[str, str] = {}
    for name, reason in blockers.items():
        upstream = differentiable_sources(model, _sources(by_name[name]))
        for candidate in sorted(upstream & candidates):
            result.setdefault(candidate, reason)
    return result

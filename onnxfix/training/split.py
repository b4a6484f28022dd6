"""The frozen prefix of a planned training, and the two graphs a split makes (``find_split``).

The prefix is every node whose outputs depend only on the model inputs and on tensors that do
not train (frozen, fixed, constants): run once over the data, its outputs are the same every
epoch. The cut is the set of prefix tensors the rest (the head) reads, several when skip
connections cross it; model inputs the head reads too pass through. The head keeps the
parameters' names, so export puts its trained values into the full inference model unchanged.

Compute is estimated as the multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul from
static shapes (onnx shape inference; an unknown dim counts as 1), which is where a CNN's time
goes; other ops count 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx
from google.protobuf.message import Message

from onnxfix._proto import library_message
from onnxfix.dtypes import dtype_name
from onnxfix.errors import ArtifactsError, param
from onnxfix.training.layout import Dim, SplitRecord, TensorSpec

__all__ = ["Split", "find_split", "head_model", "prefix_model", "model_inputs"]

_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Split:
    """Where a model splits: the prefix's nodes (indices into the graph), the cut and what
    the prefix holds of the model's parameters and compute."""

    prefix_nodes: tuple[int, ...]
    head_nodes: tuple[int, ...]
    cut: tuple[TensorSpec, ...]  # prefix tensors the head reads, in graph order
    passthrough: tuple[TensorSpec, ...]  # model inputs the head reads too
    prefix_inputs: tuple[str, ...]  # model inputs the prefix reads
    prefix_weights: tuple[str, ...]  # float initializers the prefix reads
    prefix_parameters: int  # values of the initializers the prefix reads
    total_parameters: int
    prefix_macs: int
    total_macs: int

    @property
    def parameter_share(self) -> float:
        return self.prefix_parameters / self.total_parameters if self.total_parameters else 0.0

    @property
    def compute_share(self) -> float:
        return self.prefix_macs / self.total_macs if self.total_macs else 0.0

    def record(self, model_inputs: tuple[TensorSpec, ...], fixed: Iterable[str]) -> SplitRecord:
        return SplitRecord(
            model_inputs=model_inputs,
            cut=self.cut,
            passthrough=tuple(s.name for s in self.passthrough),
            prefix_fixed=tuple(fixed),
            prefix_parameters=self.prefix_parameters,
            total_parameters=self.total_parameters,
            prefix_macs=self.prefix_macs,
            total_macs=self.total_macs,
        )


def model_inputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """The graph's inputs that are not initializers, as the data must hold them."""
    weights = {t.name for t in model.graph.initializer}
    return tuple(_spec(i.name, i) for i in model.graph.input if i.name not in weights)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads: its inputs and, for If/Loop/Scan, any name their bodies use."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            for inner in sub.node:
                names |= _outer_names(inner)
    return names


def _walk_back(
    graph: onnx.GraphProto,
    produced: Mapping[str, int],
    names: Iterable[str],
    model_inputs: Mapping[str, onnx.ValueInfoProto],
    stop: Callable[[str, int], bool] = lambda name, at: False,
) -> tuple[set[int], set[str], set[str]]:
    """The nodes (by index) that compute ``names``, walking back to the model's inputs or to a
    tensor ``stop`` accepts (given its name and producer); returns those nodes, the tensors
    the walk stopped at, and the model inputs it reached."""
    nodes: set[int] = set()
    stopped: set[str] = set()
    inputs: set[str] = set()
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        at = produced.get(name)
        if at is None:
            if name in model_inputs:
                inputs.add(name)
            continue
        if stop(name, at):
            stopped.add(name)
            continue
        nodes.add(at)
        stack.extend(_outer_names(graph.node[at]))
    return nodes, stopped, inputs


def _infer(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ArtifactsError(
            f"onnx shape inference fails on the model, so the cut's shapes are unknown: "
            f"{library_message(e)}; drop {param('split', 'split=True')}"
        ) from e
    g = inferred.graph
    return {v.name: v for v in [*g.input, *g.value_info, *g.output]}


def _dims(value: onnx.ValueInfoProto | None) -> tuple[Dim, ...] | None:
    if value is None or not value.type.HasField("tensor_type"):
        return None
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
    )


def _spec(name: str, value: onnx.ValueInfoProto | None) -> TensorSpec:
    dims = _dims(value)
    if value is None or dims is None or not value.type.tensor_type.elem_type:
        raise ArtifactsError(
            f"onnx shape inference gives no type and shape for {name!r}, which the split would "
            f"cut at; drop {param('split', 'split=True')}"
        )
    return TensorSpec(name, dims, dtype_name(value.type.tensor_type.elem_type))


def _macs(node: onnx.NodeProto, shapes: dict[str, onnx.ValueInfoProto], weights) -> int:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul from static shapes."""
    if node.op_type not in _MAC_OPS or not node.output:
        return 0

    def dims(name: str) -> tuple[int, ...] | None:
        if name in weights:
            return tuple(weights[name].dims)
        found = _dims(shapes.get(name))
        return (
            None
            if found is None
            else tuple(d if isinstance(d, int) and d > 0 else 1 for d in found)
        )

    out = dims(node.output[0])
    if out is None or len(node.input) < 2:
        return 0
    if node.op_type in ("Conv", "ConvTranspose"):
        w = dims(node.input[1])
        if w is None:
            return 0
        if node.op_type == "Conv":  # each output value: (C_in/group) x kernel products
            return math.prod(out) * math.prod(w[1:])
        x = dims(node.input[0])  # each input value goes to (C_out/group) x kernel outputs
        return 0 if x is None else math.prod(x) * math.prod(w[1:])
    a = dims(node.input[0])
    if not a:
        return 0
    trans_a = any(at.name == "transA" and at.i for at in node.attribute)
    k = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
    return math.prod(out) * k


def find_split(
    model: onnx.ModelProto,
    trainable: Iterable[str],
    outputs: Iterable[str],
    inference: onnx.ModelProto | None = None,
) -> Split:
    """The frozen prefix of ``model`` (the training graph) when ``trainable`` train and the loss
    reads ``outputs``; refused, with the reason, when no useful prefix exists.

    ``inference`` is the model the prefix is cut from (the normalised inference model): the
    cut is only at tensors it computes too. A training-only rewrite (a ConvTranspose rewritten
    as zero insertion and Conv, a BatchNormalization as Mul and Add) keeps its outputs' names
    but makes new tensors inside; where one of those would be cut, its producer goes to the
    head with the rest of the rewrite, back to the tensors both graphs compute."""
    graph = model.graph
    both = None if inference is None else _computed(inference)
    weights = {t.name: t for t in graph.initializer}
    model_inputs = {i.name: i for i in graph.input if i.name not in weights}
    learning = set(trainable)
    dynamic = set(model_inputs)
    prefix: set[int] = set()
    first_blocked: tuple[str, str] | None = None
    for index, node in enumerate(graph.node):
        reads = _outer_names(node)
        if reads & learning:
            learning.update(o for o in node.output if o)
            if first_blocked is None and reads & dynamic:
                why = sorted(reads & (set(trainable) or learning))
                first_blocked = (node.name or node.output[0], why[0] if why else "")
        elif reads & dynamic:
            dynamic.update(o for o in node.output if o)
            if _has_subgraph(node):  # kept whole in the head: its body is not split
                learning.update(o for o in node.output if o)
            else:
                prefix.add(index)
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    # The head: what the loss needs, back from its outputs, stopping at prefix tensors; then
    # the prefix that feeds the cut.
    head, cut_names, passthrough = _walk_back(
        graph,
        produced,
        outputs,
        model_inputs,
        stop=lambda name, at: at in prefix and (both is None or name in both),
    )
    needed, _, prefix_inputs = _walk_back(graph, produced, cut_names, model_inputs)
    real = [i for i in sorted(needed) if i in prefix]
    if not real:
        culprit = (
            f" (node {first_blocked[0]!r} reads the inputs and trainable {first_blocked[1]!r})"
            if first_blocked
            else ""
        )
        raise ArtifactsError(
            f"{param('split', 'split=True')}: no useful prefix: nothing frozen sits next to the "
            f"model's inputs{culprit}. Freeze the first layers (set-kernel, "
            f"{param('freeze')}) or drop {param('split', 'split=True')}"
        )
    counted = {
        w
        for i in real
        for n in graph.node[i].input
        for w in _weights_behind(n, weights, produced, graph, dynamic | learning)
        if weights[w].data_type in _FLOATS
    }
    if not counted:
        ops = sorted({graph.node[i].op_type for i in real})
        raise ArtifactsError(
            f"{param('split', 'split=True')}: no useful prefix: the frozen prefix holds only "
            f"parameter-free ops ({', '.join(ops)}), so computing it once saves next to nothing. "
            f"Freeze the first layers (set-kernel, {param('freeze')}) or drop "
            f"{param('split', 'split=True')}"
        )
    shapes = _infer(model)
    float_params = [t for t in graph.initializer if t.data_type in _FLOATS]
    macs = [_macs(n, shapes, weights) for n in graph.node]
    ordered_cut = [o for i in sorted(produced[c] for c in cut_names) for o in graph.node[i].output]
    return Split(
        prefix_nodes=tuple(real),
        head_nodes=tuple(sorted(head)),
        cut=tuple(_spec(c, shapes.get(c)) for c in ordered_cut if c in cut_names),
        passthrough=tuple(_spec(i.name, i) for i in graph.input if i.name in passthrough),
        prefix_inputs=tuple(i.name for i in graph.input if i.name in prefix_inputs),
        prefix_weights=tuple(sorted(counted)),
        prefix_parameters=sum(math.prod(weights[n].dims) for n in counted),
        total_parameters=sum(math.prod(t.dims) for t in float_params),
        prefix_macs=sum(macs[i] for i in real),
        total_macs=sum(macs[i] for i in sorted(set(real) | head)),
    )


def _weights_behind(name, weights, produced, graph, computed_from_data) -> set[str]:
    """The initializers ``name`` is, or is computed from by nodes that read no data (the
    nodes that join a tensor's channel parts, :mod:`onnxfix.training.parts`)."""
    found: set[str] = set()
    stack, seen = [name], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in weights:
            found.add(n)
        elif n in produced and n not in computed_from_data:
            stack.extend(i for i in graph.node[produced[n]].input if i)
    return found


def _computed(model: onnx.ModelProto) -> set[str]:
    """The names of the tensors ``model``'s graph computes or takes as inputs."""
    graph = model.graph
    return {i.name for i in graph.input} | {o for n in graph.node for o in n.output if o}


_FLOATS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    from onnxfix.dtypes import np_dtype, onnx_type

    return onnx.helper.make_tensor_value_info(
        spec.name, onnx_type(np_dtype(spec.dtype)), list(spec.shape)
    )


def _subset(
    model: onnx.ModelProto,
    nodes: Iterable[int],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
) -> onnx.ModelProto:
    """A copy of ``model`` with only ``nodes`` (and the constant nodes they need), these
    inputs and outputs, and the initializers the nodes read."""
    graph = model.graph
    keep = set(nodes)
    given = {v.name for v in inputs}
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    stack = [n for i in keep for n in _outer_names(graph.node[i])]
    while stack:  # constant-only nodes the kept ones read (a Constant, a shape computation)
        name = stack.pop()
        at = produced.get(name)
        if name in given or at is None or at in keep:
            continue
        keep.add(at)
        stack.extend(_outer_names(graph.node[at]))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    kept_nodes = [g.node[i] for i in sorted(keep)]
    read = {n for node in kept_nodes for n in _outer_names(node)}
    kept_inits = [t for t in g.initializer if t.name in read and t.name not in given]
    names = read | {o for node in kept_nodes for o in node.output}
    kept_info = [v for v in g.value_info if v.name in names and v.name not in given]
    fields: tuple[tuple[str, Sequence[Message]], ...] = (
        ("node", kept_nodes),
        ("initializer", kept_inits),
        ("input", inputs),
        ("output", outputs),
        ("value_info", kept_info),
    )
    for field_name, values in fields:
        copies = [copy.deepcopy(v) for v in values]  # the originals go with the field
        g.ClearField(field_name)
        getattr(g, field_name).extend(copies)
    g.ClearField("sparse_initializer")
    return out


def head_model(
    training_model: onnx.ModelProto, split: Split, outputs: list[str]
) -> onnx.ModelProto:
    """The training graph from the cut on: inputs the cut tensors and the passed-through model
    inputs, outputs ``outputs`` (the loss input and extra outputs); parameters keep their names."""
    graph = training_model.graph
    by_name = {v.name: v for v in graph.output}
    shapes = None
    outs = []
    for name in outputs:
        if name not in by_name:
            shapes = shapes or _infer(training_model)
        outs.append(by_name.get(name) or shapes[name])  # type: ignore[index]
    inputs = [_value_info(s) for s in split.cut] + [
        next(i for i in graph.input if i.name == s.name) for s in split.passthrough
    ]
    return _subset(training_model, split.head_nodes, inputs, outs)


def prefix_model(model: onnx.ModelProto, split: Split) -> onnx.ModelProto:
    """The plain inference model ``model`` (the normalised one) from its inputs to the cut.

    Its outputs keep the inference model's own dims (a dynamic batch stays dynamic)."""
    graph = model.graph
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    missing = [c.name for c in split.cut if c.name not in produced]
    if missing:
        raise ArtifactsError(
            f"{param('split', 'split=True')}: the cut tensor {missing[0]!r} exists only in the "
            f"training graph (a training-only rewrite made it); drop {param('split', 'split=True')}"
        )
    shapes = _infer(model)
    outputs = [shapes.get(c.name) or _value_info(c) for c in split.cut]
    inputs = [i for i in graph.input if i.name in split.prefix_inputs]
    nodes: set[int] = set()
    stack = [c.name for c in split.cut]
    names = {i.name for i in inputs}
    while stack:
        name = stack.pop()
        at = produced.get(name)
        if name in names or at is None or at in nodes:
            continue
        nodes.add(at)
        stack.extend(_outer_names(graph.node[at]))
    return _subset(model, nodes, inputs, outputs)

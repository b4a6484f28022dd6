"""Find the convolution layers of a model and where each one's weight comes from.

Works on a model whose weight payloads have not been read: only names, dims, node
structure and small constant tensors are looked at.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field, replace
from typing import Union

import onnx

from onnxfix._proto import attribute, constant_tensor, iter_graphs, producers
from onnxfix.dtypes import dtype_name, tensor_to_array
from onnxfix.errors import SelectorError, param

__all__ = [
    "CONV_OPS",
    "QUANTIZED_OPS",
    "ConvLayer",
    "WeightSource",
    "find_convs",
    "resolve_layers",
]

CONV_OPS = ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv")
QUANTIZED_OPS = ("ConvInteger", "QLinearConv")
# Ops that pass a weight through unchanged (up to dtype): a weight behind one of them can be
# lifted into an initializer of its own.
_PASS_THROUGH = ("Identity", "Cast")


@dataclass(frozen=True)
class WeightSource:
    """Where a conv's weight tensor comes from.

    ``kind`` is one of: ``initializer``, ``Constant``, ``ConstantOfShape``, ``Identity``, ``Cast``
    (of an initializer or constant), ``DequantizeLinear``, ``graph input``, ``computed``, ``missing``.
    ``tensor`` names the stored tensor behind it (the initializer, or the Constant node's output).
    """

    kind: str
    tensor: str | None = None
    node: str | None = None  # the producing node's name, when a node produces the weight
    chain: tuple[str, ...] = ()  # pass-through node outputs between the stored tensor and the conv

    @property
    def label(self) -> str:
        if self.kind in _PASS_THROUGH:
            return f"{self.kind} of {self.tensor!r}"
        return self.kind


@dataclass(frozen=True)
class ConvLayer:
    index: int
    node: str
    op: str
    weight: str
    shape: tuple[int, ...] | None
    dtype: str | None
    group: int
    source: WeightSource
    bias: str | None
    graph: str  # "main" or the path to the subgraph that holds the node
    shared_with: tuple[str, ...] = ()
    fixed: bool = False
    node_proto: onnx.NodeProto | None = field(default=None, repr=False, compare=False)
    # PyTorch module paths the layer is known by ("layer1.0.conv1"): from the weight's name,
    # a TorchScript node name, the dynamo exporter's name scopes (module_paths)
    modules: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.op in QUANTIZED_OPS or self.source.kind == "DequantizeLinear"

    @property
    def display(self) -> str:
        return self.node or f"#{self.index}"

    @property
    def spatial(self) -> tuple[int, ...] | None:
        return None if self.shape is None else self.shape[2:]


# What a name in a graph comes from: the node producing it, an initializer or a graph input.
_Origin = Union[onnx.NodeProto, onnx.TensorProto, onnx.ValueInfoProto]


class _Scope:
    """Name -> producer lookups for one graph, chained to the enclosing graph's scope."""

    def __init__(self, graph: onnx.GraphProto, parent: _Scope | None) -> None:
        self.parent = parent
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name: i for i in graph.input}
        self.producers = producers(graph)
        self.value_info = {v.name: v for v in list(graph.value_info) + list(graph.output)}

    def lookup(self, name: str) -> _Origin | None:
        """Where ``name`` comes from, in this graph or the nearest enclosing one that has it."""
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.producers:
                return scope.producers[name]
            if name in scope.initializers:
                return scope.initializers[name]
            if name in scope.inputs:
                return scope.inputs[name]
            scope = scope.parent
        return None


def _tensor_type(tensor: onnx.TensorProto) -> tuple[tuple[int, ...], str]:
    return tuple(tensor.dims), dtype_name(tensor.data_type)


def _value_type(value: onnx.ValueInfoProto) -> tuple[tuple[int, ...] | None, str | None]:
    ttype = value.type.tensor_type
    dtype = dtype_name(ttype.elem_type) if ttype.elem_type else None
    if not ttype.HasField("shape"):
        return None, dtype
    dims: list[int] = []
    for d in ttype.shape.dim:
        if not d.HasField("dim_value"):  # a named or unknown dim
            return None, dtype
        dims.append(d.dim_value)
    return tuple(dims), dtype


def _const_of_shape_dims(node: onnx.NodeProto, scope: _Scope) -> tuple[int, ...] | None:
    found = scope.lookup(node.input[0]) if node.input else None
    tensor = None
    if isinstance(found, onnx.TensorProto):
        tensor = found
    elif isinstance(found, onnx.NodeProto) and found.op_type == "Constant":
        tensor = constant_tensor(found)
    if tensor is None:
        return None
    return tuple(int(v) for v in tensor_to_array(tensor).ravel())


def _trace_weight(
    name: str, scope: _Scope
) -> tuple[WeightSource, tuple[int, ...] | None, str | None]:
    """Follow ``name`` back to what stores it; return the source, its shape and dtype."""
    chain: list[str] = []
    chain_kind = ""
    dtype_override = None
    current = name
    while True:
        node = scope.lookup(current)
        if node is None:
            return WeightSource("missing", current), None, None
        if isinstance(node, onnx.TensorProto):
            shape, dtype = _tensor_type(node)
            src_kind = chain_kind if chain else "initializer"
            return (
                WeightSource(src_kind, current, chain=tuple(chain)),
                shape,
                dtype_override or dtype,
            )
        if isinstance(node, onnx.ValueInfoProto):
            input_shape, input_dtype = _value_type(node)
            source = WeightSource("graph input", current, chain=tuple(chain))
            return source, input_shape, input_dtype
        if node.op_type == "Constant":
            value = constant_tensor(node)
            if value is None:  # value_float(s)/value_int(s) forms
                return WeightSource("Constant", current, node.name, tuple(chain)), None, None
            shape, dtype = _tensor_type(value)
            src = WeightSource(
                chain_kind if chain else "Constant", current, node.name, tuple(chain)
            )
            return src, shape, dtype_override or dtype
        if node.op_type == "ConstantOfShape":
            value = constant_tensor(node)
            dtype = dtype_name(value.data_type) if value is not None else "float32"
            src = WeightSource(
                chain_kind if chain else "ConstantOfShape", current, node.name, tuple(chain)
            )
            return src, _const_of_shape_dims(node, scope), dtype_override or dtype
        if node.op_type in _PASS_THROUGH and node.input:
            if not chain:
                chain_kind = node.op_type
                if node.op_type == "Cast":
                    dtype_override = dtype_name(attribute(node, "to"))
            chain.append(current)
            current = node.input[0]
            continue
        if node.op_type == "DequantizeLinear":
            return WeightSource("DequantizeLinear", current, node.name), None, None
        return WeightSource("computed", current, node.name), None, None


def _weight_input(node: onnx.NodeProto) -> str | None:
    index = 3 if node.op_type == "QLinearConv" else 1
    return node.input[index] if len(node.input) > index else None


def _bias_input(node: onnx.NodeProto) -> str | None:
    index = 8 if node.op_type == "QLinearConv" else 2
    if node.op_type == "ConvInteger":
        return None
    return node.input[index] if len(node.input) > index and node.input[index] else None


def find_convs(
    model: onnx.ModelProto, fixed: set[str] | frozenset[str] = frozenset()
) -> list[ConvLayer]:
    """Every conv node of the model (subgraphs included), in graph order.

    ``fixed`` holds the tensor names onnxfix has fixed (from the provenance record).
    """
    layers: list[ConvLayer] = []
    consumers: dict[str, list[onnx.NodeProto]] = {}
    scopes: dict[str, _Scope] = {}
    for path, graph in iter_graphs(model.graph):
        parent = scopes.get(path.rsplit("/", 1)[0]) if "/" in path else None
        scope = scopes[path] = _Scope(graph, parent)
        for node in graph.node:
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(node)
            if node.op_type not in CONV_OPS:
                continue
            weight = _weight_input(node)
            if weight is None:
                source, shape, dtype = WeightSource("missing"), None, None
            else:
                source, shape, dtype = _trace_weight(weight, scope)
            layers.append(
                ConvLayer(
                    index=len(layers),
                    node=node.name,
                    op=node.op_type,
                    weight=weight or "",
                    shape=shape,
                    dtype=dtype,
                    group=int(attribute(node, "group", 1)),
                    source=source,
                    bias=_bias_input(node),
                    graph=path,
                    fixed=(source.tensor in fixed) or (weight in fixed),
                    node_proto=node,
                    modules=module_paths(node, weight or ""),
                )
            )
    by_tensor: dict[str, list[ConvLayer]] = {}
    for layer in layers:
        if layer.source.tensor is not None:
            by_tensor.setdefault(layer.source.tensor, []).append(layer)
    result = []
    for layer in layers:
        stored = layer.source.tensor
        shared = [
            other.display
            for other in (by_tensor.get(stored, ()) if stored is not None else ())
            if other is not layer
        ]
        # Non-conv readers of the stored tensor (tied weights, e.g. a MatMul) change with it too.
        shared += [
            n.name or n.op_type
            for n in consumers.get(stored or "", [])
            if n.op_type not in CONV_OPS and n.op_type not in _PASS_THROUGH
        ]
        # replace() costs as much as the rest of this loop: only for the few shared weights.
        result.append(replace(layer, shared_with=tuple(shared)) if shared else layer)
    return result


def _joined(scopes: list[str]) -> str:
    """Module scopes as one dotted path; a scope that already holds its parent's path
    ('layer1', 'layer1.0') continues it rather than repeating it."""
    path = ""
    for scope in scopes:
        if not scope:
            continue
        path = scope if (not path or scope.startswith(path + ".")) else f"{path}.{scope}"
    return path


def module_paths(node: onnx.NodeProto, weight: str) -> tuple[str, ...]:
    """The PyTorch module paths a conv is known by, most specific first:

    * the weight's name without ``.weight`` (both exporters, unless BatchNorm was folded);
    * a TorchScript node name: ``/layer1/layer1.0/conv1/Conv`` is ``layer1.0.conv1``;
    * the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata: ``['', 'se',
      'se.reduce', 'conv2d_2']`` is ``se.reduce`` (its nodes are named ``node_conv2d_2``).
    """
    import ast

    paths: list[str] = []
    if weight.endswith(".weight"):
        paths.append(weight[: -len(".weight")])
    if node.name.startswith("/") and node.name.count("/") >= 2:
        paths.append(_joined(node.name.strip("/").split("/")[:-1]))
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes" and len(prop.value) < 4096:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if (
                isinstance(scopes, list)
                and len(scopes) >= 3
                and all(isinstance(x, str) for x in scopes)
            ):
                paths.append(_joined(scopes[:-1]))
    return tuple(dict.fromkeys(p for p in paths if p))


def resolve_layers(layers: list[ConvLayer], selectors: list[str]) -> list[ConvLayer]:
    """The conv layers that ``selectors`` pick, in graph order, each once.

    A selector is a node name, a weight tensor name, a PyTorch module path (``conv1``,
    ``layer1.0.conv1``: see :func:`module_paths`), ``#N`` (index from ``inspect``) or a glob
    over node names, weight names and module paths (``'layer1.*'``). One that matches nothing
    raises :class:`SelectorError` listing the layers.
    """
    chosen: dict[int, ConvLayer] = {}
    for selector in selectors:
        matched = _match(layers, selector)
        if not matched:
            raise SelectorError(
                f"{param('layers', 'layer selector')} {selector!r} matches no conv layer; {_some_layers(layers, selector)}. "
                "Use a node name, a weight name, a module path, #N or a glob."
            )
        for layer in matched:
            chosen[layer.index] = layer
    return [chosen[i] for i in sorted(chosen)]


# A message lists at most this many layers: a backbone has hundreds.
_LISTED = 8


def _some_layers(layers: list[ConvLayer], selector: str) -> str:
    """The model's conv layers for a message: all of a few, else the closest to ``selector``."""
    if not layers:
        return "the model has no conv layers"

    def describe(chosen: list[ConvLayer]) -> str:
        return ", ".join(f"#{c.index} {c.display!r} (weight {c.weight!r})" for c in chosen)

    if len(layers) <= _LISTED:
        return f"the model has: {describe(layers)}"
    names: dict[str, ConvLayer] = {}
    for layer in layers:
        for name in (layer.node, layer.weight):
            if name:
                names.setdefault(name, layer)
    close = difflib.get_close_matches(selector, names, n=_LISTED)
    chosen = sorted({names[n].index: names[n] for n in close}.values(), key=lambda c: c.index)
    what = "the closest" if chosen else "the first"
    return (
        f"the model has {len(layers)} conv layers ('onnxfix inspect' lists them), "
        f"{what}: {describe(chosen or layers[:_LISTED])}"
    )


def _match(layers: list[ConvLayer], selector: str) -> list[ConvLayer]:
    if selector.startswith("#"):
        try:
            index = int(selector[1:])
        except ValueError:
            raise SelectorError(
                f"{param('layers', 'layer selector')} {selector!r}: '#' must be followed by a layer index, e.g. '#0'"
            ) from None
        if not 0 <= index < len(layers):
            raise SelectorError(
                f"{param('layers', 'layer selector')} {selector!r}: the model has {len(layers)} conv layers, "
                f"indices #0 to #{len(layers) - 1}"
            )
        return [layers[index]]
    exact = [c for c in layers if selector in (c.node, c.weight)]
    if exact:
        return exact
    # A PyTorch module path ("features.1", "layer1.0.conv1"), however the exporter kept it.
    module = [c for c in layers if selector in c.modules]
    if module:
        return module
    if any(ch in selector for ch in "*?["):
        return [
            c
            for c in layers
            if any(fnmatch.fnmatchcase(n, selector) for n in (c.node, c.weight, *c.modules) if n)
        ]
    return []

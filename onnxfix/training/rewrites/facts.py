"""What the training rewrites know about the graph they rewrite (:class:`GraphFacts`).

Constant values, static shapes and element types (from ONNX shape inference with data
propagation, run once), who reads a tensor, and whether a tensor depends on a parameter that
will train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxfix._proto import DEFAULT_DOMAINS, constant_value, default_opset, producers
from onnxfix.dtypes import tensor_to_array
from onnxfix.training.freeze import NON_DIFFERENTIABLE_INPUTS

__all__ = ["GraphFacts", "attributes", "known", "FLOAT_TYPES"]

logger = logging.getLogger(__name__)

# Element types the rewrites build constants for (float16 lacks several CPU kernels in ORT).
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE})

# Initializers up to this many elements stay in the copy that shape inference sees, so data
# propagation can read shape-like constants; larger ones become typed graph inputs there.
_INFERENCE_MAX_ELEMENTS = 4096
_NO_GRADIENT_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "Constant"})
# Ops whose output has the rank of their first input: used to recover a rank that shape
# inference lost (it gives up after, e.g., a Reshape to a computed shape).
_SAME_RANK_OPS = frozenset(
    {
        "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Elu",
        "Selu", "Clip", "Identity", "Dropout", "BatchNormalization", "Cast", "Neg", "Abs",
        "Exp", "Log", "Sqrt", "Softplus", "Softsign", "Mish", "Gelu",
        "InstanceNormalization", "LayerNormalization", "Softmax", "LogSoftmax",
    }
)  # fmt: skip


def known(dims: Sequence[int | None]) -> tuple[int, ...] | None:
    """``dims`` when every one is known (see :meth:`GraphFacts.shape`), else None."""
    static = tuple(d for d in dims if d is not None)
    return static if len(static) == len(dims) else None


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node of ``graph`` or of its subgraphs."""
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            names |= _names_read(sub)
    return names


def _inference_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference that leaves the large tensors behind."""
    view = onnx.ModelProto()
    view.ir_version = model.ir_version
    view.opset_import.extend(model.opset_import)
    view.functions.extend(model.functions)
    src, graph = model.graph, view.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    listed = {i.name for i in src.input}
    for t in src.initializer:
        if int(np.prod(t.dims)) <= _INFERENCE_MAX_ELEMENTS:
            graph.initializer.append(t)
        elif t.name not in listed:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return view


class GraphFacts:
    """Read-only facts about ``model``'s main graph, gathered once for all rewrites."""

    def __init__(self, model: onnx.ModelProto, frozen: AbstractSet[str] = frozenset()):
        graph = model.graph
        self.model = model
        self.frozen = frozenset(frozen)
        self.opset = default_opset(model)
        self.initializers = {t.name: t for t in graph.initializer}
        self.producers = producers(graph)
        self.graph_outputs = {o.name for o in graph.output}
        self.read = _names_read(graph)
        self.taken: set[str] = set(self.producers) | set(self.initializers) | self.read
        self.taken |= {i.name for i in graph.input} | self.graph_outputs
        self.taken |= {n.name for n in graph.node if n.name}
        self._types: dict[str, onnx.TypeProto] | None = None

    # ---- names -------------------------------------------------------------------------
    def fresh(self, name: str) -> str:
        """``name``, or ``name_<k>`` if taken; the result is then taken."""
        candidate, k = name, 1
        while candidate in self.taken:
            candidate = f"{name}_{k}"
            k += 1
        self.taken.add(candidate)
        return candidate

    def is_used(self, name: str) -> bool:
        """Does any node (subgraphs included) or the graph output read ``name``?"""
        return bool(name) and (name in self.read or name in self.graph_outputs)

    # ---- values, shapes, types -----------------------------------------------------------
    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output; None for anything else."""
        if not name:
            return None
        if name in self.initializers:
            try:
                return tensor_to_array(self.initializers[name])
            except Exception:  # external data not loaded: not a constant we can read
                return None
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            return constant_value(node)
        return None

    def _type(self, name: str) -> onnx.TypeProto | None:
        if self._types is None:
            self._types = self._infer_types()
        return self._types.get(name)

    def _infer_types(self) -> dict[str, onnx.TypeProto]:
        types: dict[str, onnx.TypeProto] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(
                _inference_view(self.model), check_type=False, strict_mode=False, data_prop=True
            )
            values = list(inferred.graph.value_info) + list(inferred.graph.output)
            values += list(inferred.graph.input)
        except Exception as e:  # a model onnx cannot infer: rewrites needing shapes skip
            logger.debug("shape inference failed (%s); using the declared types only", e)
            graph = self.model.graph
            values = list(graph.value_info) + list(graph.output) + list(graph.input)
        for v in values:
            if v.type.HasField("tensor_type"):
                types[v.name] = v.type
        for name, t in self.initializers.items():
            types[name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
        return types

    def elem_type(self, name: str) -> int | None:
        t = self._type(name)
        if t is None or not t.tensor_type.elem_type:
            return None
        return t.tensor_type.elem_type

    def float_dtype(self, name: str) -> np.dtype | None:
        """The NumPy dtype of ``name`` if it is a float type the rewrites handle."""
        elem = self.elem_type(name)
        if elem not in FLOAT_TYPES:
            return None
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """Dims of ``name`` (None for an unknown dim), or None if even the rank is unknown."""
        t = self._type(name)
        if t is None or not t.tensor_type.HasField("shape"):
            rank = self._fallback_rank(name, depth=0)
            return None if rank is None else (None,) * rank
        return tuple(
            d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim
        )

    def _fallback_rank(self, name: str, depth: int) -> int | None:
        node = self.producers.get(name)
        if node is None or depth > 64:
            return None
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            weight = self._type(node.input[1])
            if weight is not None and weight.tensor_type.HasField("shape"):
                return len(weight.tensor_type.shape.dim)
        if node.op_type in _SAME_RANK_OPS and node.input:
            t = self._type(node.input[0])
            if t is not None and t.tensor_type.HasField("shape"):
                return len(t.tensor_type.shape.dim)
            return self._fallback_rank(node.input[0], depth + 1)
        return None

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shape(name)
        return None if shape is None else known(shape)

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    # ---- training ------------------------------------------------------------------------
    def requires_grad(self, name: str) -> bool:
        """Does ``name`` depend, through differentiable inputs, on a float32 initializer that
        is not frozen (that is, one that will train)?"""
        stack, seen = [name], set()
        while stack:
            current = stack.pop()
            if not current or current in seen:
                continue
            seen.add(current)
            init = self.initializers.get(current)
            if init is not None:
                if init.data_type == onnx.TensorProto.FLOAT and current not in self.frozen:
                    return True
                continue
            node = self.producers.get(current)
            if node is None or node.op_type in _NO_GRADIENT_OPS:
                continue
            skip = NON_DIFFERENTIABLE_INPUTS.get(node.op_type, frozenset())
            stack.extend(i for k, i in enumerate(node.input) if k not in skip)
        return False

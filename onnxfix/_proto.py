"""Small ONNX helpers the rest of onnxfix shares, each written once.

- graphs: :func:`iter_graphs` (a graph and its If/Loop/Scan subgraphs), :func:`producers`
  (output name -> node), :func:`initializer` and :func:`find_initializer` (by name);
- nodes: :func:`attribute` (one attribute's value), :func:`constant_tensor`,
  :func:`constant_of_shape_fill` and :func:`constant_value` (what Constant and ConstantOfShape
  nodes hold);
- models: :func:`default_opset`, :func:`cpu_session` (a quiet CPU InferenceSession);
- messages: :func:`library_message` (an onnx or ONNX Runtime error as one line);
- bytes: :func:`le_array`, :func:`le_bytes` and :func:`from_le_bytes`, a tensor's values as
  ONNX stores them (C order, little-endian). They are defined in :mod:`onnxfix.dtypes`, which
  builds tensors with them and which this module imports, and are re-exported here.

Importing this module imports onnx and numpy, never onnxruntime (:func:`cpu_session` does,
when called).

Where ONNX requires uniqueness (initializer names, node outputs, attribute names: onnx.checker
rejects a model that repeats one), the helpers take the first occurrence, except
:func:`producers`, which maps a name to its last producer, as a dict built in graph order does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxfix.dtypes import from_le_bytes, le_array, le_bytes, tensor_to_array

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "iter_graphs",
    "producers",
    "initializer",
    "find_initializer",
    "attribute",
    "constant_tensor",
    "constant_of_shape_fill",
    "constant_value",
    "default_opset",
    "DEFAULT_DOMAINS",
    "cpu_session",
    "library_message",
    "le_array",
    "le_bytes",
    "from_le_bytes",
]

#: The two names of ONNX's default operator domain.
DEFAULT_DOMAINS = ("", "ai.onnx")


# ---------------------------------------------------------------------------------- graphs
def iter_graphs(
    graph: onnx.GraphProto, path: str = "main"
) -> Iterator[tuple[str, onnx.GraphProto]]:
    """Yield (path, graph) for ``graph`` and every subgraph of If/Loop/Scan nodes, depth first."""
    yield path, graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                label = node.name or node.op_type
                yield from iter_graphs(sub, f"{path}/{label}.{attr.name}")


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Output name -> the node of ``graph`` that produces it; unnamed (optional) outputs left out."""
    return {out: node for node in graph.node for out in node.output if out}


def initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    """The initializer of ``graph`` (not of its subgraphs) named ``name``, or None."""
    return next((t for t in graph.initializer if t.name == name), None)


def find_initializer(
    model: onnx.ModelProto, name: str
) -> tuple[onnx.GraphProto, onnx.TensorProto] | None:
    """The first initializer named ``name`` in the main graph or a subgraph (depth first,
    :func:`iter_graphs`' order), with the graph that holds it; None when there is none."""
    for _, graph in iter_graphs(model.graph):
        found = initializer(graph, name)
        if found is not None:
            return graph, found
    return None


# ----------------------------------------------------------------------------------- nodes
def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name`` (onnx's ``get_attribute_value``: an int, a
    float, bytes, a TensorProto, a list...), or ``default`` when the node has none."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor in a Constant or ConstantOfShape node's ``value`` attribute; None when the
    node has no ``value`` or it is not a tensor (a Constant's ``value_float``... forms)."""
    for a in node.attribute:
        if a.name == "value":
            return a.t if a.type == onnx.AttributeProto.TENSOR else None
    return None


def constant_of_shape_fill(node: onnx.NodeProto) -> np.ndarray:
    """A ConstantOfShape node's fill value, as its one-element tensor (ONNX's default: a float32
    0)."""
    value = constant_tensor(node)
    return tensor_to_array(value) if value is not None else np.zeros(1, np.float32)


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value a Constant node outputs, in any of its attribute forms (``value``,
    ``value_float(s)``, ``value_int(s)``); None for the forms not read (strings, sparse)."""
    for a in node.attribute:
        if a.name == "value":
            return tensor_to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None


# ---------------------------------------------------------------------------------- models
def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX operator set (``""`` or ``"ai.onnx"``) ``model`` imports.

    1 when it imports none: the onnx checker gives a model of IR version < 3 without any
    ``opset_import`` the default domain at version 1, and rejects such a model of IR >= 3 (ONNX
    requires the import from IR 3 on), so 1 is the only version such a model can mean.
    """
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def cpu_session(
    model: onnx.ModelProto | str | os.PathLike[str],
    *,
    quiet: bool = True,
    optimize: bool = False,
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime InferenceSession on the CPU provider, of a model or a model file.

    ``quiet`` logs errors only (ONNX Runtime warns about every unused initializer, for one).
    Graph optimisations are off unless ``optimize`` (ONNX Runtime's own default, all of them),
    so that the kernels run are the graph's own: fusions differ between an original graph and
    a rewritten one. A proto is passed as bytes, which leaves ONNX Runtime no folder to find
    external data in: give the path of a model that keeps weights in external data.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# -------------------------------------------------------------------------------- messages
# ONNX Runtime's messages start with where in its C++ the error was thrown:
# "/onnxruntime_src/...cc:937 onnxruntime::...<lambda(...)> [ONNXRuntimeError] : 1 : FAIL :
# checkpoint.cc:231 ToFile Failed to save checkpoint ...".
_ORT_WHERE = re.compile(
    r"^.*\[ONNXRuntimeError\] : \d+ : \w+ : (?:\S+\.(?:cc|cpp|h):\d+ \S+ )?", re.S
)


def library_message(error: BaseException, limit: int = 300) -> str:
    """The message of an onnx or ONNX Runtime error as one line, for an ``Error:`` line.

    onnx.checker's messages run over several lines (the node printed, "==> Context: ...");
    ONNX Runtime's start with the C++ function that threw. Lines are joined, the context put in
    brackets, ONNX Runtime's source location dropped, and the result cut at ``limit``.
    """
    text = _ORT_WHERE.sub("", str(error).strip())
    parts = []
    for line in (ln.strip() for ln in text.splitlines()):
        if line.startswith("==> Context:"):
            parts.append(f"({line[len('==> Context:') :].strip()})")
        elif line:
            parts.append(line)
    message = " ".join(parts).rstrip(". ")
    if len(message) > limit:
        message = message[: limit - 3].rstrip() + "..."
    return message or type(error).__name__

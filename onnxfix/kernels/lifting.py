"""Give a conv's weight an initializer of its own, so it can be fixed and later frozen.

Exporters hand weights to convs in several ways: an initializer (nothing to do), a Constant or
ConstantOfShape node (PaddlePaddle, the caffe2-era model zoo), or an Identity/Cast of an
initializer (PyTorch's TorchScript exporter, for tied weights). ``generate_artifacts`` bakes the
node forms into the graph silently; lifting them into initializers makes them visible to
training. Each function checks what it needs before it touches the model.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxfix._proto import (
    constant_of_shape_fill,
    constant_tensor,
    find_initializer,
    iter_graphs,
)
from onnxfix.dtypes import array_to_tensor, np_dtype, tensor_to_array
from onnxfix.errors import UnsupportedWeightError
from onnxfix.kernels.layers import ConvLayer
from onnxfix.modelio.modelfile import ModelFile

__all__ = ["weight_initializer", "untie_weight", "stored_values"]


def _graph_of_node(model: onnx.ModelProto, output: str) -> tuple[onnx.GraphProto, onnx.NodeProto]:
    for _, graph in iter_graphs(model.graph):
        for node in graph.node:
            if output in node.output:
                return graph, node
    raise KeyError(output)


def _consumers(model: onnx.ModelProto, name: str) -> int:
    count = 0
    for _, graph in iter_graphs(model.graph):
        count += sum(1 for n in graph.node for i in n.input if i == name)
        count += sum(1 for o in graph.output if o.name == name)
    return count


def _constant_value(mf: ModelFile, node: onnx.NodeProto, layer: ConvLayer) -> np.ndarray:
    if node.op_type == "Constant":
        value = constant_tensor(node)
        if value is None:
            first = node.attribute[0].name if node.attribute else "missing"
            raise UnsupportedWeightError(
                f"layer {layer.display!r}: its weight comes from Constant node {node.name!r} "
                f"with a {first!r} attribute, not a tensor; re-export the model"
            )
        return tensor_to_array(value)
    # ConstantOfShape: fill value (default float32 0) over the shape in its input.
    fill = constant_of_shape_fill(node)
    assert layer.shape is not None  # find_convs resolved the shape input already
    return np.full(layer.shape, fill.reshape(()), dtype=fill.dtype)


def _add_initializer(
    model: onnx.ModelProto, graph: onnx.GraphProto, tensor: onnx.TensorProto
) -> onnx.TensorProto:
    graph.initializer.append(tensor)
    if model.ir_version < 4:  # before IR 4 every initializer must also be a graph input
        graph.input.append(
            onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
        )
    return graph.initializer[-1]


def weight_initializer(mf: ModelFile, layer: ConvLayer) -> tuple[onnx.TensorProto, str | None]:
    """The initializer that holds ``layer``'s weight, lifting it out of nodes if needed.

    Returns the initializer and a sentence saying what was lifted (None when nothing was).
    """
    model = mf.model
    source = layer.source
    if source.kind == "initializer":
        found = find_initializer(model, layer.weight)
        assert found is not None
        return found[1], None
    if source.kind in ("Constant", "ConstantOfShape"):
        graph, node = _graph_of_node(model, layer.weight)
        array = _constant_value(mf, node, layer)
        graph.node.remove(node)
        tensor = _add_initializer(model, graph, array_to_tensor(array, layer.weight))
        return (
            tensor,
            f"lifted {source.kind} node {node.name!r} into initializer {layer.weight!r}"
            if node.name
            else f"lifted the {source.kind} node that made {layer.weight!r} into an initializer",
        )
    if source.kind in ("Identity", "Cast"):
        return _lift_chain(mf, layer)
    raise AssertionError(f"weight_initializer called on a {source.kind} weight")


def _lift_chain(mf: ModelFile, layer: ConvLayer) -> tuple[onnx.TensorProto, str]:
    """Replace an Identity/Cast chain ending at the conv with an initializer of the result."""
    model = mf.model
    stored = layer.source.tensor
    assert stored is not None  # find_convs names the tensor behind every Identity/Cast chain
    array = stored_values(mf, layer)
    found = find_initializer(model, stored)
    graph, _ = _graph_of_node(model, layer.weight)
    # Remove pass-through nodes from the conv backwards while nothing else reads them.
    removed = []
    name = layer.weight
    while name != stored:
        graph_n, node = _graph_of_node(model, name)
        if _consumers(model, name) > 1 and name != layer.weight:
            break
        graph_n.node.remove(node)
        removed.append(node.op_type)
        name = node.input[0]
    if _consumers(model, stored) == 0 and found is not None:
        found[0].initializer.remove(found[1])
    tensor = _add_initializer(model, graph, array_to_tensor(array, layer.weight))
    return tensor, (f"lifted {'/'.join(removed)} of {stored!r} into initializer {layer.weight!r}")


def stored_values(mf: ModelFile, layer: ConvLayer) -> np.ndarray:
    """The values of ``layer``'s weight as the conv sees them, wherever they are stored."""
    stored = layer.source.tensor
    assert stored is not None and layer.dtype is not None
    found = find_initializer(mf.model, stored)
    if found is not None:
        array = mf.read_array(found[1])
    else:  # a Constant or ConstantOfShape node
        _, node = _graph_of_node(mf.model, stored)
        array = _constant_value(mf, node, layer)
    return array.astype(np_dtype(layer.dtype))  # a Cast in the chain changes the dtype


def untie_weight(mf: ModelFile, layer: ConvLayer, array: np.ndarray) -> onnx.TensorProto:
    """Give ``layer`` a private copy of its (shared) weight, holding ``array``."""
    model = mf.model
    name = _fresh_name(model, f"{layer.node or layer.weight}.weight.untied")
    node = layer.node_proto
    assert node is not None
    index = 3 if layer.op == "QLinearConv" else 1
    node.input[index] = name
    graph, _ = _graph_of_node(model, node.output[0])
    return _add_initializer(model, graph, array_to_tensor(array, name))


def _fresh_name(model: onnx.ModelProto, base: str) -> str:
    taken: set[str] = set()
    for _, graph in iter_graphs(model.graph):
        taken.update(t.name for t in graph.initializer)
        taken.update(o for n in graph.node for o in n.output)
        taken.update(i.name for i in graph.input)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return name

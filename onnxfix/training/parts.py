"""Tensors with some channels fixed, as two parameters of the training graph (``split_channels``).

ONNX Runtime freezes whole tensors. A conv weight (or bias) of which ``set-kernel --channels``
fixed only some output channels is cut, in the training graph only, into the fixed rows of its
row view (:mod:`onnxfix.channels`), a frozen parameter, and the other rows, a trainable one;
nodes in front of the conv put the tensor back together under its own name:

* ``Concat`` of the two parts along the rows, in an order that is already the tensor's when
  the fixed channels come first or last;
* otherwise a ``Gather`` of the concatenation's rows in channel order (any channel set);
* for a ConvTranspose weight, ``Reshape`` / ``Transpose`` / ``Reshape`` from the row view back
  to its ``(I, O/group, *k)`` layout.

Why this form rather than a mask (``Where(mask, fixed, weight)`` over a full-size trainable
copy): the trainable parameter holds only what trains, so AdamW's weight decay and state never
touch the fixed rows, the checkpoint holds no stale copy of them, and an app reading the
trained parameters (``getContiguousParameters`` in onnxruntime-web) gets exactly the channels
that learned. Every op here has an exact gradient in ONNX Runtime (Split for Concat, a scatter
of whole rows for Gather, the inverse permutation for Transpose): each trained channel gets
its full gradient, bit for bit, and the fixed part none. The inference graph and ``export``
keep one tensor (:meth:`ChannelParts.join`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from onnxfix._proto import iter_graphs
from onnxfix.channels import ChannelParts
from onnxfix.dtypes import array_to_tensor
from onnxfix.errors import ArtifactsError
from onnxfix.provenance import Provenance

__all__ = ["split_channels", "part_names"]

FIXED_SUFFIX = ".fixed"
TRAIN_SUFFIX = ".train"


def part_names(fixed: Provenance) -> dict[str, tuple[str, str]]:
    """For each tensor with some channels fixed, the names of its fixed and trained parts."""
    return {
        name: (name + FIXED_SUFFIX, name + TRAIN_SUFFIX)
        for name, entry in fixed.items()
        if entry.fixed_channels is not None
    }


def split_channels(
    model: onnx.ModelProto,
    fixed: Provenance,
    read: Callable[[onnx.TensorProto], np.ndarray],
) -> dict[str, ChannelParts]:
    """Cut each tensor of ``model`` (the training graph) with some channels fixed into two
    parameters, recombined in front of its readers; ``read`` gives an initializer's values."""
    names = part_names(fixed)
    if not names:
        return {}
    graph = model.graph
    taken = _all_names(model)
    initializers = {t.name: k for k, t in enumerate(graph.initializer)}
    parts: dict[str, ChannelParts] = {}
    nodes: list[onnx.NodeProto] = []
    for name, (fixed_name, train_name) in names.items():
        if name not in initializers:
            continue  # the freeze plan reports a record naming no initializer
        for part in (fixed_name, train_name):
            if part in taken:
                raise ArtifactsError(
                    f"tensor {name!r} has only some channels fixed and trains as two parts, "
                    f"but the model already has a tensor named {part!r}; rename that tensor"
                )
        tensor = graph.initializer[initializers[name]]
        entry = fixed[name]
        if tuple(tensor.dims) != entry.shape:
            raise ArtifactsError(
                f"fixed kernel {name!r} has shape {list(tensor.dims)}, its record "
                f"{list(entry.shape)}; re-run set-kernel on the original model"
            )
        split = ChannelParts(
            name=name,
            fixed_name=fixed_name,
            train_name=train_name,
            shape=entry.shape,
            fixed=entry.fixed_channels or (),
            op=entry.op,
            role=entry.role,
            group=entry.group,
        )
        fixed_rows, trained_rows = split.split(read(tensor))
        tensor.CopyFrom(array_to_tensor(fixed_rows, fixed_name))
        graph.initializer.append(array_to_tensor(trained_rows, train_name))
        nodes += _join_nodes(split)
        parts[name] = split
    dropped = set(parts)
    kept_inputs = [i for i in graph.input if i.name not in dropped]  # IR < 4 lists them
    del graph.input[:]
    graph.input.extend(kept_inputs)
    kept_info = [v for v in graph.value_info if v.name not in dropped]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    return parts


def _join_nodes(parts: ChannelParts) -> list[onnx.NodeProto]:
    """The nodes that compute ``parts.name`` from its two parameters."""
    base = f"{parts.name}/onnxfix_join"
    order = parts.order()
    transposed = parts.op == "ConvTranspose" and parts.role == "weight"
    inputs = [parts.fixed_name, parts.train_name]
    gather = not np.array_equal(order, np.arange(parts.channels))
    if gather and parts.trained == tuple(range(len(parts.trained))):
        inputs.reverse()  # the fixed channels are the last ones: train rows first is in order
        gather = False
    nodes: list[onnx.NodeProto] = []
    rows = parts.name if not (gather or transposed) else f"{base}/rows"
    nodes.append(helper.make_node("Concat", inputs, [rows], name=f"{base}/Concat", axis=0))
    if gather:
        ordered = parts.name if not transposed else f"{base}/ordered"
        nodes.append(_const(f"{base}/order", order))
        nodes.append(
            helper.make_node(
                "Gather", [rows, f"{base}/order"], [ordered], name=f"{base}/Gather", axis=0
            )
        )
        rows = ordered
    if transposed:
        cin, cout_g, *spatial = parts.shape
        g = parts.group
        nodes.append(_const(f"{base}/grouped", np.array([g, cout_g, cin // g, *spatial])))
        nodes.append(_const(f"{base}/shape", np.array(parts.shape)))
        nodes.append(
            helper.make_node(
                "Reshape",
                [rows, f"{base}/grouped"],
                [f"{base}/grouped_rows"],
                name=f"{base}/Reshape",
            )
        )
        perm = [0, 2, 1, *range(3, 3 + len(spatial))]
        nodes.append(
            helper.make_node(
                "Transpose",
                [f"{base}/grouped_rows"],
                [f"{base}/swapped"],
                name=f"{base}/Transpose",
                perm=perm,
            )
        )
        nodes.append(
            helper.make_node(
                "Reshape", [f"{base}/swapped", f"{base}/shape"], [parts.name], name=f"{base}/Layout"
            )
        )
    return nodes


def _const(name: str, values: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant",
        [],
        [name],
        name=name,
        value=array_to_tensor(values.astype(np.int64), name),
    )


def _all_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for _, graph in iter_graphs(model.graph):
        names.update(t.name for t in graph.initializer)
        names.update(v.name for v in graph.input)
        names.update(o for n in graph.node for o in n.output)
    return names

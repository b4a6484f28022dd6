"""Make an exported model's parameters visible to training, changing nothing it computes.

Each step checks what it needs, changes the model in place and returns sentences saying what it
changed (empty when nothing was needed):

* :func:`drop_initializer_inputs`: IR < 4 graphs list every initializer as a graph input too,
  which makes training treat weights as data to feed.
* :func:`lift_constant_parameters`: weights held by Constant/ConstantOfShape nodes (PaddlePaddle,
  the caffe2-era zoo) become initializers; otherwise ``generate_artifacts`` bakes them in silently.
* :func:`name_unknown_dims`: dims written as -1 (paddle2onnx) become named dims.
* :func:`raise_opset`: opset < 12 (no SoftmaxCrossEntropyLoss, old operator forms) is converted
  with onnx's version converter; the caller checks the outputs did not change.
* :func:`inference_form`: a model exported in training mode (ONNX Runtime's on-device training
  docs say ``training=TrainingMode.TRAINING``): BatchNormalization with ``training_mode=1`` and
  running-statistics outputs, Dropout with a true ``training_mode``, become their inference
  forms. ONNX Runtime would otherwise run and train them on batch statistics and with dropout,
  in the exported model too. The only normalisation that changes what the model computes: the
  caller compares against the original in inference form.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from onnxfix._proto import (
    constant_of_shape_fill,
    constant_tensor,
    default_opset,
    initializer,
    producers,
)
from onnxfix.dtypes import array_to_tensor, tensor_to_array

__all__ = [
    "prepare_for_training",
    "drop_initializer_inputs",
    "lift_constant_parameters",
    "raise_opset",
    "name_unknown_dims",
    "inference_form",
    "PARAMETER_SLOTS",
    "TRAINING_OPSET",
]

# Old models are converted to this opset: the first with every loss ONNX Runtime training
# builds (SoftmaxCrossEntropyLoss is opset 12) and with Split/Squeeze/ReduceSum axes as inputs.
TRAINING_OPSET = 13
MIN_TRAINING_OPSET = 12

# Inputs that hold learnable parameters in exported models: op type -> input indices.
PARAMETER_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "PRelu": (1,),
    "LSTM": (1, 2, 3),
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
    "Add": (1,),
    "Mul": (1,),
}
# Add/Mul carry biases and scales in many exports, but also scalar constants (x * 0.5): only
# tensors with more than this many elements are lifted from them.
_MIN_ELEMENTWISE_PARAM = 1


def drop_initializer_inputs(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = {t.name for t in graph.initializer}
    listed = [i for i in graph.input if i.name in names]
    old_ir = model.ir_version
    if old_ir < 4:
        model.ir_version = 7  # initializers need not be inputs from IR 4; the converter needs >= 4
    if not listed:
        return []
    for value in listed:
        graph.input.remove(value)
    return [
        f"removed {len(listed)} initializers from the graph inputs (an IR {old_ir} graph lists them there)"
    ]


def name_unknown_dims(model: onnx.ModelProto) -> list[str]:
    """Dims written as -1 (paddle2onnx does this) become named dims.

    ONNX says a dim is a non-negative value or a name; -1 survives inference but ONNX Runtime's
    gradient graph propagates it as a size, and the first training step crashes.
    """
    fixed = 0
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    for value in values:
        if not value.type.tensor_type.HasField("shape"):
            continue
        for k, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = "batch" if k == 0 else f"{value.name}_dim{k}"
                fixed += 1
    return [f"named {fixed} dimensions written as -1"] if fixed else []


def raise_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` converted to :data:`TRAINING_OPSET` when its opset is too old to train."""
    from onnx import version_converter

    from onnxfix.errors import ArtifactsError

    old = default_opset(model)
    if old >= MIN_TRAINING_OPSET:
        return model, []
    # onnx 1.17's converter drops the external-data fields of initializers: a tensor comes back
    # with its shape and no data (seen; 1.23 keeps them). In the light model every weight is
    # such a reference, so each one the converter emptied gets its reference back.
    external = {t.name: t for t in model.graph.initializer if uses_external_data(t)}
    try:
        converted = version_converter.convert_version(model, TRAINING_OPSET)
    except Exception as e:  # the converter raises RuntimeError/ConvertError with its own text
        raise ArtifactsError(
            f"the model's opset {old} is too old to train (ONNX Runtime training needs "
            f"{MIN_TRAINING_OPSET}+) and onnx's version converter cannot convert it: "
            f"{str(e).splitlines()[0]}. Re-export the model at opset {TRAINING_OPSET} or later"
        ) from e
    for tensor in converted.graph.initializer:
        reference = external.get(tensor.name)
        if (
            reference is not None
            and not uses_external_data(tensor)
            and (tensor.data_type, list(tensor.dims)) == (reference.data_type, list(reference.dims))
            and not _holds_values(tensor)
        ):
            tensor.CopyFrom(reference)
    converted.ir_version = max(converted.ir_version, 7)
    return converted, [f"converted opset {old} to {TRAINING_OPSET} with onnx's version converter"]


def _holds_values(tensor: onnx.TensorProto) -> bool:
    typed = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
    return bool(tensor.raw_data) or any(len(getattr(tensor, f)) for f in typed)


def _constant_array(
    node: onnx.NodeProto, graph: onnx.GraphProto, made_by: dict[str, onnx.NodeProto]
) -> np.ndarray | None:
    """The value of a Constant (``value`` form) or ConstantOfShape node of ``graph``, whose
    producers are ``made_by``; None when it is not known."""
    if node.op_type == "Constant":
        value = constant_tensor(node)
        return tensor_to_array(value) if value is not None else None
    if node.op_type == "ConstantOfShape":
        source = made_by.get(node.input[0])
        if source is not None and source.op_type == "Constant":
            shape = _constant_array(source, graph, made_by)
        else:
            stored = initializer(graph, node.input[0])
            shape = tensor_to_array(stored) if stored is not None else None
        if shape is None:
            return None
        fill = constant_of_shape_fill(node)
        return np.full(tuple(int(d) for d in shape), fill.reshape(()), dtype=fill.dtype)
    return None


def lift_constant_parameters(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    made_by = producers(graph)
    lifted: list[tuple[onnx.NodeProto, np.ndarray]] = []
    seen: set[str] = set()
    for node in graph.node:
        for slot in PARAMETER_SLOTS.get(node.op_type, ()):
            if slot >= len(node.input) or node.input[slot] in seen:
                continue
            name = node.input[slot]
            producer = made_by.get(name)
            if producer is None or producer.op_type not in ("Constant", "ConstantOfShape"):
                continue
            array = _constant_array(producer, graph, made_by)
            if array is None or array.dtype.kind != "f":
                continue
            if node.op_type in ("Add", "Mul") and array.size <= _MIN_ELEMENTWISE_PARAM:
                continue
            seen.add(name)
            lifted.append((producer, array))
    for producer, array in lifted:
        graph.node.remove(producer)
        graph.initializer.append(array_to_tensor(array, producer.output[0]))
    if not lifted:
        return []
    kinds = sorted({p.op_type for p, _ in lifted})
    return [
        f"lifted {len(lifted)} {'/'.join(kinds)}-node weights into initializers so they can train"
    ]


def inference_form(model: onnx.ModelProto) -> list[str]:
    """Training-mode BatchNormalization and Dropout nodes of the main graph in their inference
    form (see the module); refuses a BatchNorm whose running statistics another node or the
    graph's outputs read, or that are not constants (initializers)."""
    from onnxfix.errors import ArtifactsError

    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    changed = []
    for node in graph.node:
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            training = any(a.name == "training_mode" and a.i for a in node.attribute)
            extra = [o for o in node.output[1:] if o]
            if not training and not extra:
                continue
            name = node.name or node.output[0]
            used = [o for o in extra if o in read]
            if used:
                raise ArtifactsError(
                    f"BatchNormalization {name!r} is in training form and its output {used[0]!r} "
                    "(updated running statistics) is read; export the model for inference "
                    "(model.eval()), or without that output"
                )
            stats = [i for i in node.input[3:5] if i not in initializers]
            if stats:
                raise ArtifactsError(
                    f"BatchNormalization {name!r} reads running statistics {stats[0]!r} computed "
                    "in the graph, not stored: onnxfix trains BatchNorm with stored running "
                    "statistics (export with do_constant_folding=False and model.eval())"
                )
            kept = [a for a in node.attribute if a.name not in ("training_mode", "momentum")]
            del node.attribute[:]
            node.attribute.extend(kept)
            del node.output[1:]
            changed.append(name)
        elif node.op_type == "Dropout" and node.domain in ("", "ai.onnx") and len(node.input) > 2:
            flag = node.input[2]
            tensor = next((t for t in graph.initializer if t.name == flag), None)
            producer = next((n for n in graph.node if flag in n.output), None)
            if tensor is None and producer is not None and producer.op_type == "Constant":
                tensor = constant_tensor(producer)
            value = tensor_to_array(tensor) if tensor is not None else None
            if value is not None and bool(np.asarray(value).reshape(-1)[0]):
                del node.input[2:]  # no training_mode: inference
                changed.append(node.name or node.output[0])
    if not changed:
        return []
    shown = ", ".join(repr(n) for n in changed[:4]) + ("..." if len(changed) > 4 else "")
    return [
        f"{len(changed)} BatchNormalization/Dropout nodes were exported in training mode "
        f"({shown}): made their inference form (running statistics, no dropout), in the training "
        "graph and the exported model; ONNX Runtime would train and run them on batch "
        "statistics and with dropout"
    ]


def prepare_for_training(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Apply every normalisation; return the model (changed in place, or a converted copy) and
    what changed."""
    changes = inference_form(model)
    changes += drop_initializer_inputs(model)
    changes += name_unknown_dims(model)
    changes += lift_constant_parameters(model)
    model, converted = raise_opset(model)
    return model, changes + converted

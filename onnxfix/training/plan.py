"""What a model's training will look like, before anything is built: ``plan_training``.

Shared by ``make-artifacts`` (which then builds it) and ``inspect --trainable`` (which reports
it). Steps: refuse what cannot train (quantized convs), normalise (:mod:`onnxfix.training.normalize`),
choose the loss input, rewrite ops ONNX Runtime cannot differentiate on the CPU in a copy that
becomes the training graph (:mod:`onnxfix.training.rewrites`), and decide what trains
(:mod:`onnxfix.training.freeze`). Runs no ONNX Runtime code, so it cannot crash.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxfix._proto import library_message
from onnxfix._proto import producers as graph_producers
from onnxfix.channels import ChannelParts
from onnxfix.dtypes import tensor_to_array
from onnxfix.errors import ArtifactsError, param
from onnxfix.kernels.layers import find_convs
from onnxfix.provenance import Provenance, read_provenance
from onnxfix.training.freeze import FreezePlan, freeze_plan
from onnxfix.training.normalize import prepare_for_training
from onnxfix.training.options import LOSSES
from onnxfix.training.parts import part_names, split_channels

if TYPE_CHECKING:
    from onnxfix.training.rewrites import Rewrite

__all__ = ["TrainingPlan", "plan_training", "choose_loss_input", "squasher", "class_axis"]

_SQUASHERS = {"cross-entropy": ("Softmax", "LogSoftmax"), "bce": ("Sigmoid",)}
_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass
class TrainingPlan:
    model: onnx.ModelProto  # normalised: the inference graph, original outputs
    training_model: onnx.ModelProto  # rewritten, with the loss input as an output
    loss_input: str
    freeze: FreezePlan
    fixed: Provenance  # the fixed tensors' records
    changes: list[str] = field(default_factory=list)  # normalisations applied to both graphs
    rewrites: list[Rewrite] = field(default_factory=list)  # training graph only
    notes: list[str] = field(default_factory=list)
    # tensors with some channels fixed: the training graph holds them as two parameters
    parts: dict[str, ChannelParts] = field(default_factory=dict)

    @property
    def fixed_parameters(self) -> dict[str, str]:
        """Each fixed tensor's record name -> the parameter that holds its fixed values."""
        return {
            name: self.parts[name].fixed_name if name in self.parts else name for name in self.fixed
        }


def _refuse_quantized(model: onnx.ModelProto) -> None:
    quantized = [c for c in find_convs(model) if c.quantized]
    if quantized:
        names = ", ".join(
            f"{c.display!r} ({c.op if c.op != 'Conv' else 'QDQ weight'})" for c in quantized[:5]
        )
        raise ArtifactsError(
            f"the model has quantized convs ({names}{'...' if len(quantized) > 5 else ''}); ONNX "
            "Runtime cannot train integer weights. Fine-tune the float model, then quantize it"
        )


def squasher(model: onnx.ModelProto, loss: str, output: str) -> onnx.NodeProto | None:
    """The Softmax or LogSoftmax (cross-entropy) or Sigmoid (bce) that ``output`` comes from,
    if any. Exporters often reshape probabilities after the Softmax (and onnx's version
    converter wraps an old Softmax in Flatten/Reshape): shape-only ops are looked through."""
    producers = graph_producers(model.graph)
    node = producers.get(output)
    while node is not None and node.op_type in _SHAPE_ONLY and node.input:
        node = producers.get(node.input[0])
    if node is not None and node.op_type in _SQUASHERS.get(loss, ()):
        return node
    return None


def choose_loss_input(
    model: onnx.ModelProto, loss: str, loss_input: str | None
) -> tuple[str, list[str]]:
    """The tensor the loss reads, and notes for the user about how it was chosen."""
    outputs = [o.name for o in model.graph.output]
    notes: list[str] = []
    if loss_input is None:
        loss_input = outputs[0]
        if len(outputs) > 1:
            notes.append(
                f"the model has {len(outputs)} outputs ({', '.join(outputs)}); the loss uses the first, "
                f"{loss_input!r} (choose another with --loss-input)"
            )
    elif loss_input not in outputs:
        raise ArtifactsError(
            f"{param('loss_input')} {loss_input!r} is not an output of the model; its outputs are: {', '.join(outputs)}"
        )
    node = squasher(model, loss, loss_input)
    if node is not None:
        logits = node.input[0]
        notes.append(
            f"output {loss_input!r} comes from {node.op_type}; {loss} is computed on its input "
            f"{logits!r} (the logits), since the loss applies {node.op_type.lower()} itself"
        )
        loss_input = logits
    return loss_input, notes


def class_axis(model: onnx.ModelProto, loss: str, output: str | None) -> int | None:
    """The axis cross-entropy's classes are on, when not axis 1: the axis the Softmax (or
    LogSoftmax) the scores come from normalises (a sequence recogniser's [N, T, C] logits
    normalise the last axis). None for axis 1, PyTorch's convention, and for other losses."""
    if loss != "cross-entropy":
        return None
    node = squasher(model, loss, output or model.graph.output[0].name)
    if node is None:
        return None
    from onnxfix._proto import attribute, default_opset

    default = -1 if default_opset(model) >= 13 else 1
    axis = int(attribute(node, "axis", default))
    return None if axis == 1 else axis


def _classes_first(model: onnx.ModelProto, scores: str, axis: int) -> str:
    """Add a Transpose that moves ``axis`` of ``scores`` to axis 1; its output's name."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return scores  # _expose reports what fails, naming the step
    info = next(
        (
            v
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)
            if v.name == scores
        ),
        None,
    )
    rank = len(info.type.tensor_type.shape.dim) if info is not None else None
    if rank is None or rank < 3:
        return scores
    axis %= rank
    if axis == 1:
        return scores
    perm = [0, axis] + [k for k in range(1, rank) if k != axis]
    name = f"{scores}/onnxfix_classes_first"
    model.graph.node.append(
        onnx.helper.make_node("Transpose", [scores], [name], name=name, perm=perm)
    )
    return name


def _expose(model: onnx.ModelProto, name: str) -> None:
    """Make ``name`` a graph output (onnxblock builds losses on graph outputs only)."""
    if name in {o.name for o in model.graph.output}:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ArtifactsError(
            f"onnx shape inference fails on the model, so the loss cannot read {name!r}: "
            f"{library_message(e)}. Fix the model or export it again "
            "(onnx.checker.check_model(model, full_check=True) shows the problem)"
        ) from e
    info = next((v for v in inferred.graph.value_info if v.name == name), None)
    if info is None:
        info = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    model.graph.output.append(info)


_INT64_MAX = (1 << 63) - 1
_MAX_BATCH = 1 << 32  # values in one input of a batch: 16 GB of float32, far past a device's


def _check_sizes(name: str, dims: object) -> None:
    """An input shape is a list of sizes from 1 to int64's largest (ONNX stores dims as int64)."""
    shown = ",".join(map(str, dims)) if isinstance(dims, (list, tuple)) else repr(dims)
    if not isinstance(dims, (list, tuple)) or not dims:
        raise ArtifactsError(
            f"{param('input_shapes')} {name}={shown} is not a list of sizes; give one size per "
            f"axis, e.g. {param('input_shapes:example', f'{name}: [1, 3, 224, 224]')}"
        )
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= _INT64_MAX:
            raise ArtifactsError(
                f"{param('input_shapes')} {name}={shown}: size {d!r} is not a whole number from "
                f"1 to {_INT64_MAX}; give the real size of every axis, batch included"
            )
    if math.prod(dims) > _MAX_BATCH:
        raise ArtifactsError(
            f"{param('input_shapes')} {name}={shown} holds {math.prod(dims)} values, more than "
            f"one training batch can (2^32); give the real size of every axis, batch included"
        )


def _fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """Give the training graph's inputs exactly the --input-shape sizes.

    ONNX Runtime 1.19.2's training kernels mis-size some gradients when dims are dynamic (seen
    on PaddleOCR: a Mul gradient broadcasting a 0-sized buffer, SIGFPE, SIGSEGV); with static
    sizes they train. The batch axis is fixed too: the recogniser crashes even with only that
    one dynamic. The exported inference model keeps its dynamic dims.
    """
    inputs = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        _check_sizes(name, dims)
        if name not in inputs:
            raise ArtifactsError(
                f"{param('input_shapes')} {name}: the model has no input {name!r}; its inputs are: "
                f"{', '.join(i for i in inputs if i not in {t.name for t in model.graph.initializer})}"
            )
        declared = inputs[name].type.tensor_type.shape.dim
        if len(declared) != len(dims) or any(
            d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != v
            for d, v in zip(declared, dims)
        ):
            shown = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in declared
            ]
            raise ArtifactsError(
                f"{param('input_shapes')} {name}={','.join(map(str, dims))} does not fit the model's input "
                f"{name!r} of shape [{', '.join(map(str, shown))}]"
            )
        for dim, value in zip(declared, dims):
            dim.Clear()
            dim.dim_value = value
    if shapes:
        del model.graph.value_info[:]  # shapes inferred from the old, dynamic inputs


def plan_training(
    model: onnx.ModelProto,
    *,
    loss: str = "mse",
    loss_input: str | None = None,
    freeze: tuple[str, ...] | list[str] = (),
    train: tuple[str, ...] | list[str] = (),
    extra_outputs: tuple[str, ...] | list[str] = (),
    strict: bool = False,
    source: str = "the model",
    input_shapes: dict[str, list[int]] | None = None,
    read: Callable[[onnx.TensorProto], np.ndarray] = tensor_to_array,
) -> TrainingPlan:
    """Plan training for ``model`` (changed in place by the normalisations).

    ``read`` gives an initializer's values (those of a light model are in its file): only
    tensors with some channels fixed are read, to cut them in two (:mod:`~onnxfix.training.parts`).
    """
    from onnxfix.training.rewrites import (
        rewrite_for_training,  # the rewrite catalogue is only needed here
    )

    if loss not in LOSSES:
        raise ArtifactsError(f"{param('loss')} {loss!r} is not one of: {', '.join(LOSSES)}")
    fixed = read_provenance(model, source=source)
    _refuse_quantized(model)
    axis = class_axis(model, loss, loss_input)
    chosen, notes = choose_loss_input(model, loss, loss_input)
    model, changes = prepare_for_training(model)
    names = part_names(fixed)
    fixed_params = [names[n][0] if n in names else n for n in fixed]
    aliases = {part: whole for whole, pair in names.items() for part in pair}
    frozen: set[str] = set(fixed_params)
    for _round in range(3):
        # Some rewrites depend on what is frozen (an LSTM whose weights do not train needs a
        # gate), and what is frozen depends on the rewritten graph: iterate to a fixed point,
        # which the second round reaches since rewrites only unblock parameters.
        training = copy.deepcopy(model)
        _fix_input_shapes(training, input_shapes or {})
        scores = chosen if axis is None else _classes_first(training, chosen, axis)
        _expose(training, scores)
        for name in extra_outputs:
            _expose(training, name)
        rewrites = rewrite_for_training(training, frozen=frozen)
        parts = split_channels(training, fixed, read)
        plan = freeze_plan(
            training,
            [scores, *extra_outputs],
            fixed_params,
            freeze=freeze,
            train=train,
            strict=strict,
            aliases=aliases,
        )
        if set(plan.frozen) <= frozen:
            break
        frozen = set(plan.frozen)
    if scores != chosen:
        notes.append(
            f"cross-entropy's classes are axis {axis} of {chosen!r} (the axis its softmax "
            f"normalises): the training graph moves them to axis 1 ({scores!r}), so the labels "
            "are the scores' shape without that axis (e.g. [N, T] for [N, T, C] logits)"
        )
    return TrainingPlan(
        model=model,
        training_model=training,
        loss_input=scores,
        freeze=plan,
        fixed=fixed,
        changes=changes,
        rewrites=rewrites,
        notes=notes,
        parts=parts,
    )

"""``inspect``: what a model's conv layers are and where their weights come from.

Reads only the model's structure (weights stay on disk), so it is fast on any model size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxfix._proto import iter_graphs
from onnxfix.dtypes import dtype_name, np_dtype
from onnxfix.errors import ArtifactsError
from onnxfix.kernels.layers import ConvLayer, find_convs
from onnxfix.modelio.modelfile import inline_payloads, load_model
from onnxfix.provenance import Provenance, read_provenance
from onnxfix.training.layout import SplitRecord

__all__ = ["ModelReport", "Trainability", "inspect_model", "trainability"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str | None
    shape: tuple[int | str | None, ...] | None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape) if self.shape is not None else None,
        }


@dataclass(frozen=True)
class ModelReport:
    path: Path
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    convs: list[ConvLayer]
    parameters: int  # elements in float initializers
    parameter_bytes: int
    initializers: int
    fixed: Provenance

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "ir_version": self.ir_version,
            "opset": self.opsets.get("", self.opsets.get("ai.onnx")),
            "opsets": self.opsets,
            "producer": self.producer,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "parameters": {
                "count": self.parameters,
                "bytes": self.parameter_bytes,
                "initializers": self.initializers,
            },
            "convs": [_conv_json(c) for c in self.convs],
            "fixed_kernels": {name: record.to_json() for name, record in self.fixed.items()},
        }


def _conv_json(c: ConvLayer) -> dict:
    return {
        "index": c.index,
        "node": c.node,
        "op": c.op,
        "weight": c.weight,
        "shape": list(c.shape) if c.shape is not None else None,
        "dtype": c.dtype,
        "group": c.group,
        "source": c.source.label,
        "source_tensor": c.source.tensor,
        "graph": c.graph,
        "bias": c.bias,
        "quantized": c.quantized,
        "shared_with": list(c.shared_with),
        "fixed": c.fixed,
    }


def _value_info(value: onnx.ValueInfoProto) -> TensorInfo:
    ttype = value.type.tensor_type
    dtype = dtype_name(ttype.elem_type) if ttype.elem_type else None
    shape = None
    if ttype.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in ttype.shape.dim
        )
    return TensorInfo(value.name, dtype, shape)


def inspect_model(model: str | os.PathLike) -> ModelReport:
    """Describe ``model`` without reading its weights."""
    path = Path(model)
    proto = load_model(path, need_data=False).model
    graph = proto.graph
    initializer_names = {t.name for t in graph.initializer}
    count = nbytes = tensors = 0
    for _, g in iter_graphs(graph):
        for t in g.initializer:
            tensors += 1
            if t.data_type in _FLOAT_TYPES:
                n = math.prod(t.dims)
                count += n
                nbytes += n * np_dtype(t.data_type).itemsize
    fixed = read_provenance(proto, source=str(path))
    return ModelReport(
        path=path,
        ir_version=proto.ir_version,
        opsets={o.domain or "": o.version for o in proto.opset_import},
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        # Before IR 4 initializers were listed as inputs too; they are not inputs to feed.
        inputs=[_value_info(i) for i in graph.input if i.name not in initializer_names],
        outputs=[_value_info(o) for o in graph.output],
        convs=find_convs(proto, fixed=set(fixed)),
        parameters=count,
        parameter_bytes=nbytes,
        initializers=tensors,
        fixed=fixed,
    )


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


@dataclass(frozen=True)
class RewriteInfo:
    """A node the training graph would replace (:class:`onnxfix.training.rewrites.Rewrite`)."""

    op: str
    node: str
    description: str
    exact: bool


@dataclass(frozen=True)
class Trainability:
    """What make-artifacts would train, freeze, rewrite and normalise."""

    loss_input: str
    trainable: list[str]
    fixed: list[str]  # fixed kernels: frozen
    frozen: list[str]  # frozen by --freeze/--train
    blocked: dict[str, str]  # frozen automatically: parameter -> the node that blocks it
    excluded: dict[str, str]  # the loss does not depend on them: parameter -> why
    normalisations: list[str]
    rewrites: list[RewriteInfo]
    notes: list[str]
    split: SplitRecord | None = None  # asked for with split=True: the prefix a split takes
    split_refused: ArtifactsError | None = None  # asked for, and no useful prefix: why
    # tensors with some channels fixed -> "fixed channels 0-15 of conv1.weight, channels 16-63 train"
    channel_parts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        extra: dict = {}
        if self.channel_parts:
            extra["channel_parts"] = self.channel_parts
        if self.split is not None:
            extra["split"] = self.split.to_json()
        if self.split_refused is not None:
            extra["split_refused"] = str(self.split_refused)
        return {
            "loss_input": self.loss_input,
            "trainable": self.trainable,
            "fixed": self.fixed,
            "frozen": self.frozen,
            "blocked": self.blocked,
            "excluded": self.excluded,
            "normalisations": self.normalisations,
            "rewrites": [
                {"op": r.op, "node": r.node, "description": r.description, "exact": r.exact}
                for r in self.rewrites
            ],
            "notes": self.notes,
            **extra,
        }


def trainability(
    model: str | os.PathLike,
    *,
    loss: str = "mse",
    loss_input: str | None = None,
    freeze: str | list[str] | tuple[str, ...] = (),
    split: bool = False,
) -> Trainability:
    """What ``make-artifacts`` would train, freeze, rewrite and normalise, without building it;
    with ``split``, the frozen prefix ``make-artifacts --split`` would compute once (or why
    there is none).

    Reads the weights (the plan needs the whole graph) but runs no ONNX Runtime code.
    """
    from onnxfix.training.plan import plan_training

    path = Path(model)
    # Read by onnxfix, not onnx.load: every data file is checked first, as by every command
    # (onnxfix.modelio.external), and the plan gets the whole graph, weights in it.
    mf = load_model(path)
    inline_payloads(mf, mf.model)
    proto = mf.model
    _check_fixed_intact(proto, str(path))
    patterns = (freeze,) if isinstance(freeze, str) else tuple(freeze)
    plan = plan_training(proto, loss=loss, loss_input=loss_input, freeze=patterns, source=str(path))
    f = plan.freeze
    record, refused = None, None
    if split:
        from onnxfix.training.split import find_split, model_inputs

        try:
            found = find_split(plan.training_model, f.trainable, [plan.loss_input], plan.model)
            fixed = [n for n, p in plan.fixed_parameters.items() if p in found.prefix_weights]
            record = found.record(model_inputs(plan.training_model), fixed)
        except ArtifactsError as e:
            refused = e
    return Trainability(
        loss_input=plan.loss_input,
        trainable=list(f.trainable),
        fixed=list(f.fixed),
        frozen=[n for n in f.frozen if n not in f.fixed and n not in f.blocked],
        blocked=dict(f.blocked),
        excluded=dict(f.excluded),
        normalisations=list(plan.changes),
        rewrites=[RewriteInfo(r.op, r.node, r.description, r.exact) for r in plan.rewrites],
        notes=list(plan.notes),
        split=record,
        split_refused=refused,
        channel_parts={
            name: p.describe(p.train_name in f.trainable) for name, p in plan.parts.items()
        },
    )


def _check_fixed_intact(proto: onnx.ModelProto, source: str) -> None:
    """What make-artifacts refuses, refused here too: fixed tensors edited after set-kernel."""
    from onnxfix._proto import find_initializer
    from onnxfix.dtypes import tensor_to_array
    from onnxfix.provenance import check_intact

    def read(name: str):
        found = find_initializer(proto, name)
        return tensor_to_array(found[1]) if found is not None else None

    check_intact(read_provenance(proto, source=source), read, model=source)

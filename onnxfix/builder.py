"""Build onnxruntime-training artifacts from a model; runs in a child process (see isolation).

Steps: prepare the model so every parameter is visible to training (:mod:`onnxfix.normalize`),
choose the loss input, plan what trains (:mod:`onnxfix.freezing`), let onnxblock build the
training, eval and optimizer graphs, and write them with an IR version ONNX Runtime 1.19.2 loads.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import onnx

from ._version import __version__
from .errors import ArtifactsError
from .freezing import freeze_plan
from .isolation import set_stage
from .normalize import prepare_for_training
from .ort_training import ORT_MAX_IR_VERSION, onnxblock, training_api
from .provenance import PROVENANCE_KEY, read_provenance

__all__ = ["LOSSES", "OPTIMIZERS", "build_in_child", "MANIFEST"]

logger = logging.getLogger(__name__)

LOSSES = ("mse", "cross-entropy", "bce", "l1", "none")
OPTIMIZERS = ("adamw", "sgd")
MANIFEST = "onnxfix.json"
TARGET_NAMES = {"mse": "target", "l1": "target", "bce": "target", "cross-entropy": "labels"}
_SQUASHERS = {"cross-entropy": ("Softmax", "LogSoftmax"), "bce": ("Sigmoid",)}


def _value_info(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto | None:
    graph = model.graph
    for v in list(graph.output) + list(graph.value_info) + list(graph.input):
        if v.name == name:
            return v
    return None


def _shape(v: onnx.ValueInfoProto) -> list:
    t = v.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _dtype(v: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name


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
            f"--loss-input {loss_input!r} is not an output of the model; its outputs are: {', '.join(outputs)}"
        )
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(loss_input)
    if node is not None and node.op_type in _SQUASHERS.get(loss, ()):
        logits = node.input[0]
        notes.append(
            f"output {loss_input!r} comes from {node.op_type}; {loss} is computed on its input "
            f"{logits!r} (the logits), since the loss applies {node.op_type.lower()} itself"
        )
        loss_input = logits
    if loss_input not in outputs:
        inferred = onnx.shape_inference.infer_shapes(model)
        info = _value_info(inferred, loss_input)
        if info is None:
            info = onnx.helper.make_tensor_value_info(loss_input, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(info)
    return loss_input, notes


def _probe_shapes(model: onnx.ModelProto, loss_input: str) -> dict:
    """Concrete input shapes to self-test with, and the loss input's shape for them."""
    import onnxruntime as ort

    from .selftest import concrete_shape

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    rng = np.random.default_rng(0)
    feeds, shapes = {}, []
    for i in inputs:
        shape = concrete_shape(_shape(i))
        dtype = np.dtype(_dtype(i))
        feeds[i.name] = (
            rng.normal(size=shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        )
        shapes.append(list(shape))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        (scores,) = session.run([loss_input], feeds)
    except Exception as e:  # onnxruntime's own exception types are not exported
        raise ArtifactsError(
            f"the model does not run in onnxruntime on inputs of shape "
            f"{', '.join(f'{n}={tuple(s)}' for n, s in zip(feeds, shapes))}: {str(e).splitlines()[0]}"
        ) from e
    return {"inputs": shapes, "loss_input": list(scores.shape)}


def _loss_block(loss: str):
    block = onnxblock()
    return {
        "mse": block.loss.MSELoss,
        "cross-entropy": block.loss.CrossEntropyLoss,
        "bce": block.loss.BCEWithLogitsLoss,
        "l1": block.loss.L1Loss,
        "none": block.blocks.PassThrough,
    }[loss]()


def _save(model: onnx.ModelProto, path: Path) -> None:
    # onnxblock stamps the installed onnx's IR version (11+ with onnx >= 1.18), which ORT 1.19.2
    # refuses; the graphs use nothing newer than IR 10.
    model.ir_version = ORT_MAX_IR_VERSION
    if model.ByteSize() > (1 << 31) - (64 << 20):
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, path)


def build_in_child(job: dict) -> dict:
    out = Path(job["out"])
    set_stage("loading the model")
    model = onnx.load(job["model"])
    fixed = read_provenance(model, source=job["model"])
    set_stage("preparing the model for training")
    changes = prepare_for_training(model)
    original_outputs = [
        {"name": o.name, "shape": _shape(o), "dtype": _dtype(o)} for o in model.graph.output
    ]
    loss = job["loss"]
    loss_input, notes = choose_loss_input(model, loss, job.get("loss_input"))
    set_stage("running the model once on a synthetic batch")
    probe = _probe_shapes(model, loss_input)
    plan = freeze_plan(
        model,
        [loss_input] + list(job.get("extra_outputs", [])),
        fixed,
        freeze=job.get("freeze", ()),
        train=job.get("train", ()),
    )

    block_mod = onnxblock()
    loss_block = _loss_block(loss)
    extra = list(job.get("extra_outputs", []))

    class _Training(block_mod.TrainingBlock):
        def build(self, *_outputs):
            result = loss_block(loss_input)
            if loss == "none":
                result = result[0]
            return (result, *extra) if extra else result

    block = _Training()
    for name in plan.trainable:
        block.requires_grad(name, True)
    for name in plan.frozen:
        block.requires_grad(name, False)
    set_stage("building the gradient graph")
    with block_mod.base(model):
        block(*[o.name for o in model.graph.output])
        training_model, eval_model = block.to_model_proto()
        parameters = block.parameters()
    set_stage("writing the training and eval models")
    _save(training_model, out / "training_model.onnx")
    _save(eval_model, out / "eval_model.onnx")
    set_stage("writing the checkpoint")
    block_mod.save_checkpoint(parameters, out / "checkpoint", nominal_checkpoint=False)
    if job.get("nominal_checkpoint"):
        block_mod.save_checkpoint(parameters, out / "nominal_checkpoint", nominal_checkpoint=True)
    set_stage("building the optimizer model")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    optim = block_mod.optim.AdamW() if job["optimizer"] == "adamw" else block_mod.optim.SGD()
    with block_mod.empty_base(opset_version=opset):
        optim(parameters)
        optimizer_model = optim.to_model_proto()
    _save(optimizer_model, out / "optimizer_model.onnx")

    inputs = [
        {"name": i.name, "shape": _shape(i), "dtype": _dtype(i)}
        for i in eval_model.graph.input
        if i.name not in {t.name for t in eval_model.graph.initializer}
        and i.name not in set(plan.trainable) | set(plan.frozen)
    ]
    target = next((i for i in inputs if i["name"] == TARGET_NAMES.get(loss)), None)
    model_inputs = [i for i in inputs if target is None or i["name"] != target["name"]]
    trainable_set = set(plan.trainable)
    sizes = {
        p.name: int(np.prod(p.dims)) * onnx.helper.tensor_dtype_to_np_dtype(p.data_type).itemsize
        for p in parameters[0] + parameters[1]
    }
    import onnxruntime

    manifest = {
        "onnxfix_version": __version__,
        "onnxruntime_version": onnxruntime.__version__,
        "onnx_version": onnx.__version__,
        "source_model": os.path.basename(job["model"]),
        "inputs": model_inputs,
        "outputs": original_outputs,
        "target": target,
        "loss": loss,
        "loss_input": loss_input,
        "optimizer": job["optimizer"],
        "trainable": plan.trainable,
        "frozen": plan.frozen,
        "fixed_kernels": {name: rec["sha256"] for name, rec in fixed.items()},
        "excluded": plan.excluded,
        "trainable_bytes": sum(v for k, v in sizes.items() if k in trainable_set),
        "frozen_bytes": sum(v for k, v in sizes.items() if k not in trainable_set),
        "notes": notes,
        "probe": probe,
        "changes": changes,
        "provenance": fixed,
    }
    set_stage("recording provenance in the checkpoint")
    api = training_api()
    for name in (
        ("checkpoint", "nominal_checkpoint") if job.get("nominal_checkpoint") else ("checkpoint",)
    ):
        state = api.CheckpointState.load_checkpoint(str(out / name))
        state.properties[PROVENANCE_KEY] = json.dumps(fixed, sort_keys=True)
        state.properties["onnxfix.manifest"] = json.dumps(
            {
                k: manifest[k]
                for k in (
                    "onnxfix_version",
                    "loss",
                    "loss_input",
                    "optimizer",
                    "trainable",
                    "frozen",
                    "fixed_kernels",
                )
            },
            sort_keys=True,
        )
        api.CheckpointState.save_checkpoint(state, str(out / name))
    if job.get("ort_format"):
        set_stage("converting the models to ORT format")
        _to_ort_format(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _to_ort_format(out: Path) -> None:
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    for name in ("training_model", "eval_model", "optimizer_model"):
        convert_onnx_models_to_ort(
            out / f"{name}.onnx", output_dir=out, optimization_styles=[OptimizationStyle.Fixed]
        )
    for stray in out.glob("*.required_operators*.config"):
        stray.unlink()

"""Build onnxruntime-training artifacts from a model; runs in a child process (see isolation).

Steps: plan the training (:mod:`onnxfix.training.plan`: normalise, choose the loss input, rewrite,
decide what trains), check the planned graphs compute what the original does, let onnxblock
build the training, eval and optimizer graphs, and write them with an IR version ONNX Runtime
1.19.2 loads, beside the normalised inference model and the onnxfix.json manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxfix._proto import cpu_session, default_opset, library_message
from onnxfix._version import __version__
from onnxfix.dtypes import dtype_name, np_dtype
from onnxfix.errors import ArtifactsError, ModelFileError, param
from onnxfix.outputs import WRITE_ERRNOS, write_error
from onnxfix.provenance import PROVENANCE_KEY
from onnxfix.training.checkpoint import write_checkpoint
from onnxfix.training.isolation import JSON, set_stage
from onnxfix.training.jobs import BuildJob
from onnxfix.training.layout import (
    CHECKPOINT_MANIFEST_KEY,
    REQUIRED_OPERATORS,
    ArtifactsLayout,
    Manifest,
    ProbeShapes,
    TensorSpec,
    save_manifest,
)
from onnxfix.training.options import METRIC_LOSSES, TARGET_NAMES, OptimizerSettings
from onnxfix.training.ort import ORT_MAX_IR_VERSION, onnxblock
from onnxfix.training.plan import TrainingPlan, plan_training

__all__ = ["build_in_child", "build"]

logger = logging.getLogger(__name__)


def _shape(v: onnx.ValueInfoProto) -> list:
    t = v.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _dtype(v: onnx.ValueInfoProto) -> str:
    return dtype_name(v.type.tensor_type.elem_type)


def _session(model: onnx.ModelProto | str) -> Any:
    """A session without fusions (they differ between the original and the rewritten graph
    and would make bit-exact rewrites look inexact), of a file or of the light model."""
    if isinstance(model, str):
        return cpu_session(model)
    with _as_file(model) as path:
        return cpu_session(path)


@contextlib.contextmanager
def _as_file(model: onnx.ModelProto):
    """``model`` in a temporary file, its external data referenced by relative path from there.

    The light model's weights are external references resolved against the current directory;
    a session made from bytes has no model path, and ONNX Runtime 1.19.2 then refuses them or,
    with optimisations off, reads wrong values (seen). Creating the session reads the data, so
    the file can go as soon as it exists.
    """
    from onnxfix.modelio.modelfile import all_tensors

    tmp = tempfile.mkdtemp(prefix="onnxfix-probe.")
    try:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for tensor in all_tensors(probe):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = os.path.relpath(os.path.abspath(entry.value), tmp)
        path = os.path.join(tmp, "probe.onnx")
        with open(path, "wb") as f:
            f.write(probe.SerializeToString())
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _synthetic_feeds(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    from onnxfix.training.selftest import concrete_shape

    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for i in model.graph.input:
        if i.name in initializers:
            continue
        shape = tuple(shapes[i.name]) if i.name in shapes else concrete_shape(_shape(i))
        dtype = np.dtype(_dtype(i))
        feeds[i.name] = (
            rng.normal(size=shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        )
    return feeds


def _static_shape(
    model: onnx.ModelProto, name: str, feeds: dict[str, np.ndarray]
) -> list[int] | None:
    """``name``'s shape by onnx shape inference for these input shapes, if fully known."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.ClearField("initializer")  # shapes only: no need to copy the weights around
    for value in probe.graph.input:
        if value.name in feeds:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, feeds[value.name].shape):
                dim.Clear()
                dim.dim_value = size
    for t in model.graph.initializer:  # the initializers' types, as inputs
        probe.graph.input.append(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
    except onnx.shape_inference.InferenceError:
        return None
    for value in inferred.graph.output:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                return [d.dim_value for d in dims]
    return None


def _run(session, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict:
    wanted = {i.name for i in session.get_inputs()}
    names = names or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _reference(source: str, plan: TrainingPlan) -> onnx.ModelProto | str:
    """What the normalised model must compute: the original, or, for a model exported in
    training mode, the original in inference form (the one normalisation that changes what is
    computed, :func:`onnxfix.training.normalize.inference_form`, on purpose)."""
    from onnxfix.training.normalize import inference_form

    model, _ = _load_light(source)
    return model if inference_form(model) else source


def _check_equivalent(source: str, plan: TrainingPlan, shapes: dict[str, list[int]]) -> ProbeShapes:
    """Run the original, the normalised and the rewritten training graph on one random batch:
    their outputs must agree to float32 rounding. Returns the shapes the
    self-test will use."""
    feeds = _synthetic_feeds(plan.model, shapes)
    described = ", ".join(f"{n}={tuple(a.shape)}" for n, a in feeds.items())
    if not plan.changes and not plan.rewrites:
        # Nothing to compare: the training graph is the model itself. Only the loss input's
        # shape is needed, and shape inference gives it without running the model if static.
        static = _static_shape(plan.training_model, plan.loss_input, feeds)
        if static is not None:
            return ProbeShapes(tuple(a.shape for a in feeds.values()), tuple(static))
    try:
        # One session at a time, each dropped before the next: every session holds the weights.
        # A graph the plan did not change needs no run of its own.
        want = _run(_session(_reference(source, plan)), feeds)
        names = list(want)
        normalised = _run(_session(plan.model), feeds, names) if plan.changes else want
        trained = _run(_session(plan.training_model), feeds)
    except ArtifactsError:
        raise
    except Exception as e:  # onnxruntime's exception types are not exported
        raise ArtifactsError(
            f"the model does not run in onnxruntime on inputs of shape {described}: "
            f"{str(e).strip().splitlines()[0]}. Give real shapes with "
            f"{param('input_shapes:example', 'input_shapes={NAME: [D0, D1, ...]}')}"
        ) from e
    # Tolerance, not bit-equality, even for exact rewrites: their ops are bit-exact one by one,
    # but ONNX Runtime may pick other kernels or orders for the surrounding ops (seen: 1 ulp).
    for label, got in (("normalised", normalised), ("rewritten", trained)):
        for name, expected in want.items():
            value = got.get(name)
            if value is None:
                continue
            scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1.0)
            if value.shape != expected.shape or not np.allclose(
                value, expected, rtol=1e-4, atol=1e-5 * scale
            ):
                diff = (
                    float(np.max(np.abs(value - expected)))
                    if value.shape == expected.shape
                    else float("inf")
                )
                raise ArtifactsError(
                    f"the {label} model's output {name!r} differs from the original's by up to "
                    f"{diff:g} on a random batch; onnxfix stops rather than train a different "
                    "function. Please report this model"
                )
    return ProbeShapes(
        tuple(a.shape for a in feeds.values()), tuple(trained[plan.loss_input].shape)
    )


def _fix_labels_shape(built: onnx.ModelProto, base: onnx.ModelProto, scores: str) -> None:
    """Cross-entropy labels are the scores' shape without the class axis (axis 1).

    onnxblock drops the *last* axis, which is wrong for (N, C, d1, ...) scores.
    """
    info = next(o for o in base.graph.output if o.name == scores)
    dims = [d for k, d in enumerate(info.type.tensor_type.shape.dim) if k != 1]
    for value in built.graph.input:
        if value.name == TARGET_NAMES["cross-entropy"]:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                shape.dim.add().CopyFrom(d)


def _loss_block(loss: str, ignore_index: int | None = None):
    block = onnxblock()
    if loss == "cross-entropy" and ignore_index is not None:
        return block.loss.CrossEntropyLoss(ignore_index=ignore_index)
    return {
        "mse": block.loss.MSELoss,
        "cross-entropy": block.loss.CrossEntropyLoss,
        "bce": block.loss.BCEWithLogitsLoss,
        "l1": block.loss.L1Loss,
        "none": block.blocks.PassThrough,
    }[loss]()


def _save(model: onnx.ModelProto, path: Path, keep_ir: bool = False) -> None:
    # onnxblock stamps the installed onnx's IR version (11+ with onnx >= 1.18), which ORT 1.19.2
    # refuses; the graphs use nothing newer than IR 10.
    if not keep_ir or model.ir_version > ORT_MAX_IR_VERSION:
        model.ir_version = ORT_MAX_IR_VERSION
    if model.ByteSize() > (1 << 31) - (64 << 20):
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, path)


def _load_light(source: str):
    """The model with no weight in memory, and the ModelFile it was read from.

    Each payload embedded in ``source`` becomes an external reference into ``source`` itself
    (:func:`onnxfix.modelio.modelfile.referencing_payloads`), relative to its folder, which
    :func:`build_in_child` makes the current directory: onnx.checker, shape inference and
    ONNX Runtime, given a proto, resolve external data against it. So onnxblock's copies,
    checks and shape inference handle a model of a few MB whatever the weights weigh.
    """
    from onnxfix.modelio.modelfile import load_model, referencing_payloads

    mf = load_model(source)
    return referencing_payloads(mf), mf


def _self_contained(model: onnx.ModelProto, mf) -> None:
    """Read in the external data of the tensors that stay in a training or eval graph
    (constants, subgraphs included; the parameters are graph inputs there), so the artifacts
    stand alone. Its references are into the source ``mf`` (see :func:`_load_light`) or its
    data files, read by onnxfix with its checks (:mod:`onnxfix.modelio.external`), not by
    onnx's loader, whose checks vary with its version."""
    from onnxfix.modelio.modelfile import inline_payloads

    inline_payloads(mf, model)


def _write_inference_model(mf, plan, path: Path) -> None:
    """The normalised model, kept for export, written by the streaming writer: every payload
    the plan did not change is copied from the source (``mf``) kernel-side."""
    from onnxfix.modelio.modelfile import dereferencing_payloads
    from onnxfix.modelio.save import save_model

    if not plan.changes and not mf.uses_external_data:
        shutil.copyfile(mf.path, path)
        return
    out = dereferencing_payloads(plan.model, mf)
    out.model.ir_version = min(out.model.ir_version, ORT_MAX_IR_VERSION)
    save_model(out, path, check=False)


def _check_fixed_intact(mf, plan: TrainingPlan, model: str) -> None:
    """The fixed tensors in the file are still those set-kernel recorded: a model edited
    afterwards is refused before its tensors are frozen (and the self-test certifies them)."""
    from onnxfix._proto import find_initializer
    from onnxfix.provenance import check_intact

    def read(name: str) -> np.ndarray | None:
        found = find_initializer(mf.model, name)
        return mf.read_array(found[1]) if found is not None else None

    check_intact(plan.fixed, read, model=model)


def build_in_child(job: JSON) -> JSON:
    """The ``build`` task of :mod:`onnxfix.training.isolation`: JSON in, JSON out.

    A full disk or a file-size limit met while writing becomes one error naming the folder the
    artifacts go to; what was written is removed first, so the result can still be reported.
    """
    build_job = BuildJob.from_json(job)
    staging = Path(build_job.out)
    try:
        return build(build_job).to_json()
    except (OSError, ModelFileError) as e:
        # save_model (the inference model) has translated its own, naming the temporary folder.
        cause = e if isinstance(e, OSError) else e.__cause__
        while isinstance(cause, ModelFileError):  # translated twice: writer, then save_model
            cause = cause.__cause__
        if not isinstance(cause, OSError) or cause.errno not in WRITE_ERRNOS:
            raise
        for written in staging.iterdir():  # the partial artifacts, not the child's own files
            if not written.name.startswith(".onnxfix-"):
                shutil.rmtree(written) if written.is_dir() else written.unlink()
        raise write_error(cause, f"the artifacts in {str(staging.parent)!r}") from e


def build(job: BuildJob) -> Manifest:
    """Plan, check, build and write the artifacts ``job`` describes into ``job.out``."""
    out = ArtifactsLayout(Path(job.out))
    os.chdir(Path(job.model).parent)  # the base of the light model's external references
    set_stage("loading the model")
    model, source = _load_light(job.model)
    set_stage("planning what trains")
    shapes = {name: list(dims) for name, dims in job.input_shapes.items()}
    plan = plan_training(
        model,
        read=source.read_array,
        loss=job.loss,
        loss_input=job.loss_input,
        freeze=job.freeze,
        train=job.train,
        extra_outputs=job.extra_outputs,
        strict=job.strict,
        source=job.model,
        input_shapes=shapes or None,
    )
    del model  # plan.model is the normalised copy (the version converter may have made a new one)
    _check_fixed_intact(source, plan, job.model)
    set_stage("checking the normalised and rewritten model computes what the original does")
    probe = _check_equivalent(job.model, plan, shapes)
    set_stage("writing the inference model")
    _write_inference_model(source, plan, out.inference_model)

    head = None
    if job.split:
        set_stage("finding the frozen prefix")
        head = _split(job, plan, source, out, shapes)

    set_stage("building the gradient graph")
    extra = list(job.extra_outputs)
    # Classification losses also output what they score (the logits), last, so that train and
    # evaluate report accuracy beside the loss, and an app can too.
    metric = plan.loss_input if job.loss in METRIC_LOSSES else None
    if metric is not None and metric not in extra:
        extra.append(metric)
    training_model, eval_model, parameters = _build_graphs(
        plan, job.loss, extra, head[0] if head is not None else None, job.ignore_index
    )
    set_stage("writing the training and eval models")
    for built in (training_model, eval_model):
        _self_contained(built, source)
    _save(training_model, out.training_model)
    _save(eval_model, out.eval_model)
    if head is not None:
        probe = _head_probe(head[1], eval_model, probe)
    manifest = _manifest(job, plan, eval_model, parameters, probe)
    manifest = dataclasses.replace(
        manifest,
        metric_output=metric,
        optimizer_settings=_settings(job),
        ignore_index=job.ignore_index,
    )
    if head is not None:
        manifest = _split_manifest(manifest, plan, head[2], parameters)
    set_stage("writing the checkpoint")
    _write_checkpoints(job, out, parameters, manifest)
    set_stage("building the optimizer model")
    _save(_optimizer_model(job, plan, parameters), out.optimizer_model)
    if job.ort_format:
        set_stage("converting the models to ORT format")
        _to_ort_format(out.root)
    save_manifest(manifest, out.root)
    return manifest


def _split(job: BuildJob, plan: TrainingPlan, source, out: ArtifactsLayout, shapes):
    """Find the frozen prefix, write it as ``prefix_model.onnx`` and return the head's training
    graph, the shapes each head input takes on the probe batch, and the split."""
    from onnxfix.modelio.modelfile import dereferencing_payloads
    from onnxfix.modelio.save import save_model
    from onnxfix.training.split import find_split, head_model, prefix_model

    outputs = [plan.loss_input, *job.extra_outputs]
    split = find_split(plan.training_model, plan.freeze.trainable, outputs, plan.model)
    set_stage("writing the prefix model")
    written = dereferencing_payloads(prefix_model(plan.model, split), source)
    written.model.ir_version = min(written.model.ir_version, ORT_MAX_IR_VERSION)
    save_model(written, out.prefix_model, check=False)
    set_stage("running the prefix model")
    feeds = _synthetic_feeds(plan.model, shapes)
    try:
        cut = _session(str(out.prefix_model)).run(
            [c.name for c in split.cut], {n: feeds[n] for n in split.prefix_inputs}
        )
    except Exception as e:  # onnxruntime's exception types are not exported
        raise ArtifactsError(
            f"the prefix model does not run in onnxruntime: {library_message(e)}; drop "
            f"{param('split', 'split=True')}"
        ) from e
    probe = {c.name: tuple(a.shape) for c, a in zip(split.cut, cut)}
    probe.update({p.name: tuple(feeds[p.name].shape) for p in split.passthrough})
    return head_model(plan.training_model, split, outputs), probe, split


def _head_probe(
    shapes: dict[str, tuple[int, ...]], eval_model: onnx.ModelProto, probe: ProbeShapes
) -> ProbeShapes:
    order = [i.name for i in eval_model.graph.input if i.name in shapes]
    return ProbeShapes(tuple(shapes[n] for n in order), probe.loss_input)


def _split_manifest(
    manifest: Manifest, plan: TrainingPlan, split, parameters: tuple[list, list]
) -> Manifest:
    """The head's manifest: frozen only what its checkpoint holds, and the split's record."""
    from onnxfix.training.split import model_inputs

    held = {p.name for p in parameters[0] + parameters[1]}
    return dataclasses.replace(
        manifest,
        frozen=tuple(n for n in manifest.frozen if n in held),
        split=split.record(
            model_inputs(plan.training_model),
            [f for f, held_as in plan.fixed_parameters.items() if held_as not in held],
        ),
    )


def _write_checkpoints(
    job: BuildJob, out: ArtifactsLayout, parameters: tuple[list, list], manifest: Manifest
) -> None:
    """The checkpoint (and the nominal one, when asked for), with the manifest's properties."""
    properties = _checkpoint_properties(manifest)
    base = Path(job.model).parent  # external references in the light model start there
    write_checkpoint(out.checkpoint, *parameters, base_dir=base, properties=properties)
    if job.nominal_checkpoint:
        write_checkpoint(
            out.nominal_checkpoint,
            *parameters,
            base_dir=base,
            properties=properties,
            nominal=True,
        )


def _optimizer_model(job: BuildJob, plan: TrainingPlan, parameters: tuple[list, list]):
    """onnxblock's optimizer graph for the trainable parameters, at the model's opset, with
    the job's settings baked in (ONNX Runtime reads them from the model's node attributes)."""
    settings = _settings(job)
    block_mod = onnxblock()
    opset = default_opset(plan.model)
    if settings.optimizer == "sgd":
        optim = block_mod.optim.SGD()
    else:
        optim = block_mod.optim.AdamW(
            betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay
        )
    with block_mod.empty_base(opset_version=opset):
        optim(parameters)
        model = optim.to_model_proto()
    if settings.form == "torch":
        _torch_adamw(model)
    _flag_as_declared(model)
    return model


def _settings(job: BuildJob) -> OptimizerSettings:
    if job.optimizer_settings is not None:
        return OptimizerSettings.from_json(job.optimizer_settings)
    return OptimizerSettings.of(job.optimizer)


def _torch_adamw(model: onnx.ModelProto) -> None:
    """AdamWOptimizer in ``torch.optim.AdamW``'s form: adam_mode 0 (onnxblock writes 1, the
    Hugging Face form: eps added to the uncorrected sqrt(v), the decay after the update).
    Mode 0 decays first, p -= lr*wd*p, then p -= lr * m_hat / (sqrt(v_hat) + eps), as torch
    does; tests/training/test_optimizers.py checks it against a NumPy copy of torch's rule."""
    for node in model.graph.node:
        if node.op_type == "AdamWOptimizer":
            for attr in node.attribute:
                if attr.name == "adam_mode":
                    attr.i = 0


def _flag_as_declared(model: onnx.ModelProto) -> None:
    """Make SGD's ``update_completed`` output the shape [1] the optimizer model declares.

    onnxblock 1.19.2 declares it [1] (as AdamW's flag, which is [1]); the SGDOptimizerV2 op's
    shape inference makes it a scalar, and its kernel returns [1]. Native ONNX Runtime warns
    and merges leniently; onnxruntime-web's WebAssembly build refuses to load the model
    ("[ShapeInferenceError] Mismatch between number of inferred and declared dimensions.
    inferred=0 declared=1"); with the declaration dropped instead, both warn at every step
    that {} is not [1]. A Reshape to [1] after the op makes inference, declaration and the
    value agree: it loads everywhere and nothing warns. (ORT's own generate_artifacts writes
    the same broken optimizer model.)
    """
    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        if node.op_type != "SGDOptimizerV2" or node.output[0] not in outputs:
            continue
        flag = node.output[0]
        node.output[0] = f"{flag}/as_inferred"
        model.graph.node.extend(
            [
                onnx.helper.make_node(
                    "Constant",
                    [],
                    [f"{flag}/shape"],
                    value=onnx.helper.make_tensor(
                        f"{flag}/shape", onnx.TensorProto.INT64, [1], [1]
                    ),
                ),
                onnx.helper.make_node("Reshape", [node.output[0], f"{flag}/shape"], [flag]),
            ]
        )


def _build_graphs(
    plan: TrainingPlan,
    loss: str,
    extra: list[str],
    head: onnx.ModelProto | None = None,
    ignore_index: int | None = None,
) -> tuple[onnx.ModelProto, onnx.ModelProto, tuple[list, list]]:
    """onnxblock's training and eval graphs and the parameters, for the planned training (of
    the ``head`` graph alone, when split)."""
    block_mod = onnxblock()
    loss_block = _loss_block(loss, ignore_index)
    loss_input = plan.loss_input
    # onnxblock is imported at run time (onnxfix.training.ort), so its class is only known then.
    training_block: Any = block_mod.TrainingBlock

    class _Training(training_block):
        def build(self, *_outputs):
            result = loss_block(loss_input)
            if loss == "none":
                result = result[0]
            return (result, *extra) if extra else result

    block = _Training()
    model = plan.training_model if head is None else head
    held = None if head is None else {t.name for t in head.graph.initializer}
    for name in plan.freeze.trainable:
        block.requires_grad(name, True)
    for name in plan.freeze.frozen:
        if held is None or name in held:
            block.requires_grad(name, False)
    try:
        with block_mod.base(model):
            block(*[o.name for o in model.graph.output])
            training_model, eval_model = block.to_model_proto()
            parameters = block.parameters()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        # onnxblock runs onnx.checker (full check) on the graph it builds on.
        raise ArtifactsError(
            f"the model fails onnx.checker while building the gradient graph: "
            f"{library_message(e)}. Fix the model or export it again "
            "(onnx.checker.check_model(model, full_check=True) shows the problem)"
        ) from e
    except RuntimeError as e:  # ONNX Runtime's gradient builder: its own text, no own type
        raise ArtifactsError(
            f"onnxruntime cannot build the gradient graph of the model: {library_message(e)}. "
            "Check that the model loads in onnxruntime.InferenceSession; if it does, please "
            "report it"
        ) from e
    if loss == "cross-entropy":
        for built in (training_model, eval_model):
            _fix_labels_shape(built, model, loss_input)
    return training_model, eval_model, parameters


def _tensor_spec(v: onnx.ValueInfoProto) -> TensorSpec:
    return TensorSpec(v.name, tuple(_shape(v)), _dtype(v))


def _manifest(
    job: BuildJob,
    plan: TrainingPlan,
    eval_model: onnx.ModelProto,
    parameters: tuple[list, list],
    probe: ProbeShapes,
) -> Manifest:
    """What onnxfix.json records: versions, inputs, target, loss, what trains, provenance."""
    import onnxruntime

    f = plan.freeze
    params = set(f.trainable) | set(f.frozen)
    initializers = {t.name for t in eval_model.graph.initializer}
    inputs = [
        _tensor_spec(i)
        for i in eval_model.graph.input
        if i.name not in initializers and i.name not in params
    ]
    target = next((i for i in inputs if i.name == TARGET_NAMES.get(job.loss)), None)
    sizes = {
        p.name: int(np.prod(p.dims)) * np_dtype(p.data_type).itemsize
        for p in parameters[0] + parameters[1]
    }
    trainable = set(f.trainable)
    return Manifest(
        onnxfix_version=__version__,
        onnxruntime_version=onnxruntime.__version__,
        onnx_version=onnx.__version__,
        source_model=os.path.basename(job.model),
        inputs=tuple(i for i in inputs if target is None or i.name != target.name),
        outputs=tuple(_tensor_spec(o) for o in plan.model.graph.output),
        target=target,
        loss=job.loss,
        loss_input=plan.loss_input,
        optimizer=job.optimizer,
        trainable=tuple(f.trainable),
        frozen=tuple(f.frozen),
        # by the parameter that holds the fixed values (a part, when only some channels are)
        fixed_kernels={
            plan.fixed_parameters[name]: record.sha256 for name, record in plan.fixed.items()
        },
        excluded=dict(f.excluded),
        blocked=dict(f.blocked),
        rewrites=tuple(r.description for r in plan.rewrites),
        trainable_bytes=sum(v for k, v in sizes.items() if k in trainable),
        frozen_bytes=sum(v for k, v in sizes.items() if k not in trainable),
        notes=tuple(plan.notes),
        probe=probe,
        changes=tuple(plan.changes),
        provenance=dict(plan.fixed),
        channel_parts=dict(plan.parts),
    )


# What the checkpoint carries for an app on the device (properties survive save/load).
_CHECKPOINT_KEYS = (
    "onnxfix_version",
    "loss",
    "loss_input",
    "optimizer",
    "trainable",
    "frozen",
    "fixed_kernels",
    "channel_parts",
)


def _checkpoint_properties(manifest: Manifest) -> dict[str, str]:
    record = manifest.to_json()
    return {
        PROVENANCE_KEY: json.dumps(record["provenance"], sort_keys=True),
        CHECKPOINT_MANIFEST_KEY: json.dumps(
            {k: record[k] for k in _CHECKPOINT_KEYS if k in record}, sort_keys=True
        ),
    }


def _to_ort_format(out: Path) -> None:
    """The three models as .ort files, and the operators they need as one
    ``required_operators.config`` (for a minimal build: ``build.sh --include_ops_by_config``)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )
    from onnxruntime.tools.ort_format_model import create_config_from_models

    names = ("training_model", "eval_model", "optimizer_model")
    for name in names:
        convert_onnx_models_to_ort(
            out / f"{name}.onnx", output_dir=out, optimization_styles=[OptimizationStyle.Fixed]
        )
    for stray in out.glob("*.required_operators*.config"):
        stray.unlink()  # one per model: replaced by one for the three
    create_config_from_models(
        [out / f"{name}.ort" for name in names], out / REQUIRED_OPERATORS, False
    )

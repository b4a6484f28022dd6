"""``make-artifacts``: onnxruntime-training artifacts in which the fixed kernels are frozen.

The parent side: check the request, build in a temporary folder beside the destination (in a
child process, see :mod:`onnxfix.training.isolation`), self-test, and move the folder into place, so a
failure leaves nothing behind and the current directory is never written to.

The destination is replaced as a whole, so it may hold no input (by path or inode, see
:func:`onnxfix.modelio.targets.check_writes`), and ``force`` replaces only a folder onnxfix
wrote itself: empty, or every entry an artifact file name
(:func:`onnxfix.training.layout.is_artifact_file`) and its manifest readable. Anything else,
a model's own folder, its parent, a home folder, is refused whatever the flags.

The new folder replaces the old one in one step (``renameat2(RENAME_EXCHANGE)``), so no kill
can leave the artifacts only under a hidden name; the hidden name then holds the old folder,
removed at once or, after a kill, by the next run (:func:`onnxfix.modelio.staging.clean_stale`).
Where the file system cannot exchange, the old folder is renamed aside first, and the next run
puts it back if the new one never arrived (:func:`onnxfix.modelio.folders.recover_swap`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from onnxfix.errors import (
    ArtifactsError,
    OnnxRuntimeCrash,
    TrainingStepError,
    param,
)
from onnxfix.modelio.folders import recover_swap, replace_folder
from onnxfix.modelio.staging import private_dir
from onnxfix.modelio.targets import Write, check_writes
from onnxfix.outputs import check_output, writing
from onnxfix.training.isolation import run_isolated
from onnxfix.training.jobs import BuildJob, SelfTestJob, SelfTestResult, SelfTestSkipped
from onnxfix.training.layout import (
    ARTIFACT_FILES,
    FEATURES,
    MANIFEST,
    Manifest,
    is_artifact_file,
    is_feature_file,
    load_manifest,
)
from onnxfix.training.options import LOSSES, OPTIMIZERS, OptimizerSettings
from onnxfix.training.runtimes import TARGETS, check_target

__all__ = ["ArtifactsResult", "make_artifacts", "ARTIFACT_FILES"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactsResult:
    directory: Path
    manifest: Manifest
    selftest: SelfTestResult | SelfTestSkipped | None  # None: not asked for
    target: str = "desktop"  # the runtime checked for (onnxfix.training.runtimes)
    target_notes: tuple[str, ...] = ()


def _check_destination(model: Path, out: Path, force: bool) -> Path:
    """Refuse a destination that would lose data (see the module); its real path, where the
    artifacts are built beside and swapped in."""
    check_output(out, what="output folder", folder=True)
    if out.exists() and not out.is_dir():
        raise ArtifactsError(f"{str(out)!r} exists and is not a folder; choose another -o")
    if not out.parent.is_dir():
        raise ArtifactsError(f"the parent folder of {str(out)!r} does not exist; create it first")
    dest = Path(os.path.realpath(out))  # a symlinked -o: the folder it names is replaced
    recover_swap(dest)
    from onnxfix.modelio.modelfile import model_reads

    check_writes(model_reads(model), [Write(out, param("out", "out"), folder=True)])
    _check_replaceable(out, dest, force)
    return dest


def _check_replaceable(out: Path, dest: Path, force: bool) -> None:
    """A non-empty destination must be onnxfix's own artifacts, and then needs ``force``."""
    try:
        entries = sorted(os.scandir(dest), key=lambda e: e.name)
    except FileNotFoundError:
        return
    if not entries:
        return
    foreign = [
        e.name + ("/" if e.is_dir(follow_symlinks=False) else "")
        for e in entries
        if not (e.is_file(follow_symlinks=False) and is_artifact_file(e.name))
        and not _is_feature_cache(e)
    ]
    why = None
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        why = f"it holds {shown}{more}, which onnxfix does not write"
    else:
        try:
            load_manifest(dest)
        except ArtifactsError:
            why = f"its {MANIFEST} is missing or unreadable"
    if why is not None:
        raise ArtifactsError(
            f"{str(out)!r} is not a folder of onnxfix artifacts: {why}. {param('out', 'out')} "
            f"must be a new or empty folder, or onnxfix artifacts to replace with "
            f"{param('force', 'force=True')}"
        )
    if not force:
        raise ArtifactsError(
            f"{str(out)!r} is not empty; add {param('force', 'force=True')} to replace its contents, "
            f"or choose another {param('out', 'folder')}"
        )


def _is_feature_cache(entry: os.DirEntry) -> bool:
    """train's cache of a split's features: a real folder of feature files only."""
    if entry.name != FEATURES or not entry.is_dir(follow_symlinks=False):
        return False
    try:
        return all(
            e.is_file(follow_symlinks=False) and is_feature_file(e.name)
            for e in os.scandir(entry.path)
        )
    except OSError:
        return False


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """One pattern or name, or several: a str is one, not its letters."""
    return (value,) if isinstance(value, str) else tuple(value)


def make_artifacts(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    loss: str = "mse",
    loss_input: str | None = None,
    optimizer: str = "adamw",
    freeze: str | list[str] | tuple[str, ...] = (),
    train: str | list[str] | tuple[str, ...] = (),
    extra_outputs: str | list[str] | tuple[str, ...] = (),
    ort_format: bool = False,
    target: str = "desktop",
    nominal_checkpoint: bool = False,
    force: bool = False,
    self_test: bool = True,
    full_self_test: bool = False,
    strict: bool = False,
    input_shapes: dict[str, list[int]] | None = None,
    split: bool = False,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
    self_test_data: str | os.PathLike | None = None,
    ignore_index: int | None = None,
) -> ArtifactsResult:
    """Build training, eval and optimizer models and a checkpoint for ``model`` in ``out``.

    ``self_test`` runs one training step through the training API on the result; by default
    it leaves out the optimizer step of a model whose step needs more than SELF_TEST_BUDGET
    times its weights, and ``full_self_test`` runs that step whatever it needs, if the machine
    has the memory.

    ``split`` writes the frozen prefix as ``prefix_model.onnx`` and builds the training
    artifacts for the rest (the head) alone (:mod:`onnxfix.training.split`); ``train`` then
    computes the prefix's outputs once.
    """
    model, out = Path(model), Path(out)
    if full_self_test and not self_test:
        raise ArtifactsError(
            f"{param('full_self_test', 'full_self_test=True')} and "
            f"{param('self_test', 'self_test=False')} contradict each other; drop one"
        )
    if loss not in LOSSES:
        raise ArtifactsError(f"{param('loss')} {loss!r} is not one of: {', '.join(LOSSES)}")
    if target not in TARGETS:
        raise ArtifactsError(f"{param('target')} {target!r} is not one of: {', '.join(TARGETS)}")
    if target == "mobile":
        ort_format = True  # what the mobile packages load
    if optimizer not in OPTIMIZERS:
        raise ArtifactsError(
            f"{param('optimizer')} {optimizer!r} is not one of: {', '.join(OPTIMIZERS)}"
        )
    settings = _optimizer_settings(optimizer, betas, eps, weight_decay, momentum)
    if ignore_index is not None and loss != "cross-entropy":
        raise ArtifactsError(
            f"{param('ignore_index')} is for cross-entropy labels; {param('loss')} is {loss}"
        )
    if self_test_data is not None and not self_test:
        raise ArtifactsError(
            f"{param('self_test_data')} and {param('self_test', 'self_test=False')} contradict "
            "each other; drop one"
        )
    data = str(Path(self_test_data).resolve()) if self_test_data is not None else None
    if data is not None and not Path(data).is_file():
        raise ArtifactsError(f"self-test data {str(self_test_data)!r} does not exist")
    from onnxfix.modelio.modelfile import load_model

    # The model and every data file it names are checked here, as by every command
    # (onnxfix.modelio.external), so that a refusal names the model as it was given.
    load_model(model)
    dest = _check_destination(model, out, force)
    with writing(f"the artifacts folder {str(out)!r}"):
        staging = private_dir(dest).resolve()
    try:
        job = BuildJob(
            model=str(model.resolve()),
            out=str(staging),
            loss=loss,
            optimizer=optimizer,
            loss_input=loss_input,
            freeze=_names(freeze),
            train=_names(train),
            extra_outputs=_names(extra_outputs),
            ort_format=ort_format,
            nominal_checkpoint=nominal_checkpoint,
            strict=strict,
            input_shapes={k: tuple(v) for k, v in (input_shapes or {}).items()},
            split=split,
            optimizer_settings=settings.to_json(),
            ignore_index=ignore_index,
        )
        try:
            manifest = Manifest.from_json(
                run_isolated("build", job.to_json(), staging), source="the build's manifest"
            )
            notes = check_target(staging, manifest, target)
            result = (
                _self_test(staging, manifest, full=full_self_test, data=data) if self_test else None
            )
        except (OnnxRuntimeCrash, TrainingStepError) as e:
            # A kill from outside (out of memory, kill) is no fault of the model: no culprit.
            outside = isinstance(e, OnnxRuntimeCrash) and e.from_outside
            hint = None if outside else _crash_hint(model, input_shapes)
            if hint is None:
                raise
            if isinstance(e, OnnxRuntimeCrash):
                raise OnnxRuntimeCrash(f"{e.template}. {hint}", signal=e.signal) from e
            raise type(e)(f"{e.template}. {hint}") from e
        replace_folder(staging, dest, lambda: _check_replaceable(out, dest, force))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArtifactsResult(
        directory=out, manifest=manifest, selftest=result, target=target, target_notes=tuple(notes)
    )


def _optimizer_settings(optimizer, betas, eps, weight_decay, momentum) -> OptimizerSettings:
    if momentum is not None:
        raise ArtifactsError(
            f"{param('momentum')}: ONNX Runtime 1.19.2's on-device training has no SGD with "
            "momentum (its optimizer models are AdamW and plain SGD, and its Optimizer keeps "
            f"state only for AdamW); use {param('optimizer')} adamw or torch-adamw"
        )
    try:
        return OptimizerSettings.of(optimizer, betas=betas, eps=eps, weight_decay=weight_decay)
    except ValueError as e:
        name = str(e).split()[0]
        raise ArtifactsError(f"{param(name)}{str(e)[len(name) :]}") from None


# What the self-test may hold by default, as a multiple of the model's weights, and at least
# SELF_TEST_FLOOR: make-artifacts' memory stays near the build's own (about 1.2x the weights)
# instead of the 4x of a whole AdamW step, so a model that can be built on a machine can be
# self-tested there too. Forward and backward hold about 2.3x (measured on a 1 GB model: 2.29 GB).
# The floor keeps the whole step for models of up to about 256 MB of AdamW-trained weights,
# which is nearly every model trained on a device.
SELF_TEST_BUDGET = 2.5
SELF_TEST_FLOOR = 1 << 30


def _self_test(
    staging: Path, manifest: Manifest, *, full: bool = False, data: str | None = None
) -> SelfTestResult | SelfTestSkipped:
    """Run the self-test within its memory budget and the memory this machine has.

    A whole training step holds the weights, their gradients and the optimizer's state (AdamW:
    about 4x the weights); without the optimizer step, about 2x. The self-test runs whole if
    that fits in the available memory and, unless ``full``, in the budget (SELF_TEST_BUDGET);
    else it runs without the optimizer step, or not at all, and the result says which and why.
    """
    from onnxfix.training.selftest import step_memory

    available = available_memory()
    need = step_memory(manifest)
    weights = manifest.trainable_bytes + manifest.frozen_bytes
    budget = max(SELF_TEST_FLOOR, int(SELF_TEST_BUDGET * weights))
    fits_memory = available is None or need <= available
    if fits_memory and (full or need <= budget):
        return _run_self_test(SelfTestJob(str(staging), data=data), staging)
    held = (
        f"a training step of this model holds about {need / 1e9:.1f} GB (weights, gradients, "
        "optimizer state)"
    )
    if fits_memory:
        why = (
            f"{held}, more than the self-test's default budget of {budget / 1e9:.1f} GB "
            f"({SELF_TEST_BUDGET:g}x the weights), so the optimizer step was left out; add "
            "--full-self-test to run it"
        )
    else:
        assert available is not None  # fits_memory holds without a reading
        why = (
            f"{held} and {available / 1e9:.1f} GB is available, so the optimizer step was left out"
        )
    if available is None or step_memory(manifest, optimizer_step=False) <= available:
        job = SelfTestJob(str(staging), optimizer_step=False, data=data)
        return _run_self_test(job, staging).with_note(why)
    return SelfTestSkipped(
        f"{held} and {available / 1e9:.1f} GB is available; train it where it fits, "
        "or add --no-self-test to skip this check knowingly"
    )


def _run_self_test(job: SelfTestJob, staging: Path) -> SelfTestResult:
    return SelfTestResult.from_json(run_isolated("selftest", job.to_json(), staging))


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _crash_hint(model: Path, input_shapes: dict[str, list[int]] | None) -> str | None:
    """The likely culprit of an ONNX Runtime crash, from what crashed it on real models.

    Measured (docs/ort-gradients.md, the corpus): dynamic input dims (PaddleOCR: SIGSEGV,
    SIGFPE), and LSTM/GRU nodes whose weights do not all train (SIGSEGV).
    """
    from onnxfix.modelio.modelfile import load_model

    graph = load_model(model, need_data=False).model.graph
    initializers = {t.name for t in graph.initializer}
    dynamic = [
        i.name
        for i in graph.input
        if i.name not in initializers
        and i.name not in (input_shapes or {})
        and any(
            not d.HasField("dim_value") or d.dim_value <= 0 for d in i.type.tensor_type.shape.dim
        )
    ]
    if dynamic:
        return (
            f"Likely cause: the dynamic dims of input {dynamic[0]!r}, which ONNX Runtime's training "
            f"kernels mis-size; give its real shape with {param('input_shapes')} "
            f"{dynamic[0]}=D0,D1,..."
        )
    recurrent = [n.name or n.output[0] for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    if recurrent:
        return (
            f"Likely op: {recurrent[0]!r} (ONNX Runtime's recurrent gradients crash on some forms)"
        )
    return None

"""The ``onnxfix`` command: parse, call one library function, print.

Errors the user can fix (:class:`~onnxfix.errors.OnnxfixError`) print as one ``Error:`` line
on stderr with exit status 1; usage errors are click's (status 2); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING

import click

from onnxfix._version import __version__
from onnxfix.errors import OnnxfixError, VerifyError
from onnxfix.outputs import ignore_file_size_signal
from onnxfix.training.jobs import SelfTestSkipped
from onnxfix.training.options import LOSSES, OPTIMIZERS

if TYPE_CHECKING:
    from onnxfix.commands.inspect import Trainability
    from onnxfix.commands.make_artifacts import ArtifactsResult
    from onnxfix.training.layout import SplitRecord

__all__ = ["main", "cli"]


# How the library's parameters are spelled on this command line, for its error messages
# (onnxfix.errors.param); a name with a ':' is a longer form of the same flag.
FLAGS = {
    "layers": "--layer",
    "kernel": "--kernel",
    "kernel:spec": "--kernel SPEC",
    "kernels_file": "--kernels",
    "kernels_file:file": "--kernels FILE.npz",
    "channels": "--channels",
    "bias": "--bias",
    "bias:keep": "--bias keep",
    "untie": "--untie",
    "all_uses": "--all-uses",
    "in_place": "--in-place",
    "out": "-o",
    "force": "--force",
    "ignore_index": "--ignore-index",
    "self_test_data": "--self-test-data",
    "output": "--output",
    "checkpoint": "--checkpoint",
    "betas": "--betas",
    "eps": "--eps",
    "weight_decay": "--weight-decay",
    "momentum": "--momentum",
    "log_every": "--log-every",
    "log": "--log",
    "save_every_epoch": "--save-every-epoch",
    "keep_best": "--keep-best",
    "plot": "--plot",
    "val": "--val",
    "target": "--target",
    "ort_format": "--ort-format",
    "ort_web": "--ort-web",
    "parameters": "--parameters",
    "loss": "--loss",
    "loss_input": "--loss-input",
    "optimizer": "--optimizer",
    "freeze": "--freeze",
    "train": "--train",
    "strict": "--strict",
    "self_test": "--no-self-test",
    "full_self_test": "--full-self-test",
    "input_shapes": "--input-shape",
    "input_shapes:example": "--input-shape NAME=D0,D1,...",
    "batch_size": "--batch-size",
    "batch_size:value": "--batch-size ",
    "epochs": "--epochs",
    "checkpoint_out": "--checkpoint-out",
    "lr": "--lr",
    "seed": "--seed",
    "split": "--split",
}


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OnnxfixError as e:
            click.echo(f"Error: {e.render(FLAGS)}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxfix")
@click.option(
    "-v", "--verbose", count=True, help="More detail on stderr (-vv: ONNX Runtime's log too)."
)
def cli(verbose: int) -> None:
    """Fix hand-made conv kernels in ONNX models and keep them frozen through on-device training."""
    ignore_file_size_signal()  # past `ulimit -f`, a write fails (and is reported), not the process
    level = logging.WARNING if not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)


def _parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    """--input-shape's form (NAME=integers) is click's to check, a usage error like any
    malformed option; the sizes themselves (positive, within int64) are the library's, as for
    a caller of onnxfix.make_artifacts."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        if name in shapes:
            raise click.BadParameter(
                f"input {name!r} is given two shapes; give one", param_hint="--input-shape"
            )
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:  # also an integer of more digits than Python converts
            raise click.BadParameter(
                f"{value!r} is not NAME=D0,D1,... (e.g. x=1,3,224,224)", param_hint="--input-shape"
            ) from None
    return shapes


def _parse_betas(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        b1, b2 = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not B1,B2 (e.g. 0.9,0.999)", param_hint="--betas"
        ) from None
    return b1, b2


def data_option(help: str):
    """--data DATA.npz, shared by train and features."""
    return click.option(
        "--data", required=True, type=click.Path(dir_okay=False), metavar="DATA.npz", help=help
    )


def loss_options(command):
    """--loss and --loss-input, shared by make-artifacts and inspect --trainable."""
    command = click.option(
        "--loss-input",
        metavar="OUTPUT",
        help="The output the loss reads, when the model has several.",
    )(command)
    return click.option(
        "--loss",
        default="mse",
        show_default=True,
        type=click.Choice(LOSSES),
        help="Loss on the model's output; 'none' when the model already outputs a scalar loss.",
    )(command)


def _fmt_shape(shape) -> str:
    """Kernel shapes as 8x3x3x3."""
    return "?" if shape is None else "x".join("?" if d is None else str(d) for d in shape)


def _fmt_dims(shape) -> str:
    """Tensor shapes with named axes as [batch, 3, 224, 224]."""
    return (
        "[?]"
        if shape is None
        else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    )


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--trainable",
    is_flag=True,
    help="Report what make-artifacts would train, freeze (and why) and rewrite, building nothing.",
)
@loss_options
@click.option(
    "--freeze",
    multiple=True,
    metavar="PATTERN",
    help="With --trainable: also freeze parameters or layers matching this glob. Repeatable.",
)
@click.option(
    "--split",
    is_flag=True,
    help="With --trainable: report the frozen prefix make-artifacts --split would compute once.",
)
def inspect(
    model: str,
    as_json: bool,
    trainable: bool,
    loss: str,
    loss_input: str | None,
    freeze: tuple[str, ...],
    split: bool,
) -> None:
    """List MODEL's conv layers, their kernel shapes and where each weight comes from.

    Reads no weight data, so it is instant on any model size. With --trainable, says which
    parameters can train, which are blocked and by what, and which rewrites would apply.
    """
    from onnxfix.commands.inspect import inspect_model, trainability

    if (freeze or split) and not trainable:
        raise click.UsageError("--freeze and --split go with --trainable")
    if trainable:
        found = trainability(model, loss=loss, loss_input=loss_input, freeze=freeze, split=split)
        _print_trainability(found, as_json)
        return
    report = inspect_model(model)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    opset = report.opsets.get("", report.opsets.get("ai.onnx", "?"))
    click.echo(
        f"{report.path}: IR {report.ir_version}, opset {opset}"
        + (f", {report.producer}" if report.producer else "")
    )
    for kind, values in (("inputs", report.inputs), ("outputs", report.outputs)):
        click.echo(
            f"{kind}: " + ", ".join(f"{t.name} {t.dtype} {_fmt_dims(t.shape)}" for t in values)
        )
    click.echo(
        f"parameters: {report.parameters:,} in {report.initializers} initializers "
        f"({report.parameter_bytes / 1e6:.2f} MB)"
    )
    if not report.convs:
        click.echo("no conv layers")
        return
    rows = [("#", "node", "op", "weight", "shape", "group", "source", "shared with", "fixed")]
    for c in report.convs:
        op = c.op + (" (quantized)" if c.quantized else "")
        where = c.source.label + ("" if c.graph == "main" else f" in {c.graph}")
        rows.append(
            (
                str(c.index),
                c.node or "-",
                op,
                c.weight,
                _fmt_shape(c.shape),
                str(c.group),
                where,
                ", ".join(c.shared_with) or "-",
                _fixed_cell(report.fixed.get(c.source.tensor or c.weight)) if c.fixed else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _fixed_cell(record) -> str:
    """``yes``, or ``channels 0-15`` when only some of the weight's channels are fixed."""
    if record is None or record.fixed_channels is None:
        return "yes"
    return record.describe_channels()


def _print_trainability(t: Trainability, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(t.to_json(), indent=2))
        return
    click.echo(f"loss input: {t.loss_input}")
    for note in t.notes:
        click.echo(f"note: {note}")
    click.echo(f"trainable ({len(t.trainable)}): {', '.join(t.trainable) or '-'}")
    click.echo(f"fixed kernels, frozen ({len(t.fixed)}): {', '.join(t.fixed) or '-'}")
    for described in t.channel_parts.values():
        click.echo(f"  {described}")
    if t.frozen:
        click.echo(f"frozen by --freeze/--train ({len(t.frozen)}): {', '.join(t.frozen)}")
    for reason in sorted(set(t.blocked.values())):
        names = sorted(p for p, r in t.blocked.items() if r == reason)
        click.echo(f"blocked, frozen automatically ({len(names)}): {', '.join(names)}")
        click.echo(f"  by {reason}")
    if t.excluded:
        click.echo(
            f"not trained, the loss does not depend on them ({len(t.excluded)}): {', '.join(t.excluded)}"
        )
    for change in t.normalisations:
        click.echo(f"normalisation: {change}")
    for r in t.rewrites:
        click.echo(f"rewrite (training graph only): {r.description}")
    if t.split is not None:
        _print_split(t.split, "split: the frozen prefix computes")
    if t.split_refused is not None:
        click.echo(f"split: refused: {t.split_refused.render(FLAGS)}")


@cli.command("set-kernel")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--layer",
    "layers",
    multiple=True,
    metavar="SEL",
    help="Conv to change: node name, weight name, PyTorch module path, #N (from inspect) or a glob over those. Repeatable.",
)
@click.option(
    "--kernel",
    metavar="SPEC",
    help="K.npy, FILE.npz:KEY, a literal like '[[-1,0,1],[-2,0,2],[-1,0,1]]', or a named filter (see 'onnxfix kernels').",
)
@click.option(
    "--kernels",
    "kernels_file",
    type=click.Path(dir_okay=False),
    metavar="FILE.npz",
    help="Several layers at once: each key of the .npz is a layer selector, its array the kernel.",
)
@click.option(
    "--channels",
    metavar="RANGE",
    help="Only these output channels change and are fixed (e.g. 0:4 or 0,2,5); the others train.",
)
@click.option(
    "--bias",
    default="keep",
    show_default=True,
    metavar="keep|zero|FILE.npy",
    help="Keep the bias, zero it, or set it from a file of shape (out_channels,).",
)
@click.option(
    "--untie",
    is_flag=True,
    help="A weight shared with other nodes: give the chosen conv its own copy.",
)
@click.option(
    "--all-uses", is_flag=True, help="A weight shared with other nodes: change it for all of them."
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the result.")
@click.option("--in-place", is_flag=True, help="Overwrite MODEL instead of writing -o.")
@click.option(
    "--no-check", is_flag=True, help="Skip onnx.checker and the onnxruntime load of the result."
)
def set_kernel_cmd(
    model, layers, kernel, kernels_file, channels, bias, untie, all_uses, output, in_place, no_check
):
    """Put kernels into chosen conv layers of MODEL, touching nothing else.

    The fixed tensors are recorded in the output's metadata (onnxfix.fixed_kernels), so
    make-artifacts freezes them and verify can prove they are unchanged.
    """
    from onnxfix.commands.set_kernel import set_kernel

    if in_place == (output is not None):
        raise click.UsageError("give exactly one of -o OUTPUT and --in-place")
    result = set_kernel(
        model,
        output or model,
        layers=layers,
        kernel=kernel,
        kernels_file=kernels_file,
        channels=channels,
        bias=bias,
        untie=untie,
        all_uses=all_uses,
        in_place=in_place,
        check=not no_check,
    )
    for change in result.changes:
        click.echo(change, err=True)
    for f in result.fixed:
        which = ""
        if f.fixed_channels is not None:
            from onnxfix.channels import channel_ranges

            which = f"channels {channel_ranges(f.fixed_channels)} of "
        click.echo(
            f"fixed {which}{f.role} {f.tensor!r} of layer {f.layer!r}: {f.kernel} -> "
            f"{_fmt_shape(f.shape)} {f.dtype}, sha256 {f.sha256[:16]}"
        )
    click.echo(f"wrote {result.output}")


@cli.command("make-artifacts")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to create for the artifacts.",
)
@loss_options
@click.option(
    "--optimizer",
    default="adamw",
    show_default=True,
    type=click.Choice(OPTIMIZERS),
    help="adamw: ONNX Runtime's (Hugging Face form, eps 1e-6, no decay); torch-adamw: torch.optim.AdamW's form and defaults (eps 1e-8, weight decay 0.01); sgd.",
)
@click.option(
    "--betas",
    metavar="B1,B2",
    callback=lambda ctx, p, v: _parse_betas(v),
    help="AdamW's betas (default 0.9,0.999).",
)
@click.option("--eps", type=float, help="AdamW's eps (default: the form's, above).")
@click.option("--weight-decay", type=float, help="AdamW's decoupled weight decay.")
@click.option(
    "--momentum",
    type=float,
    help="SGD momentum: ONNX Runtime 1.19.2 has none (refused, with the reason).",
)
@click.option(
    "--freeze",
    multiple=True,
    metavar="PATTERN",
    help="Also freeze parameters or layers matching this glob. Repeatable.",
)
@click.option(
    "--train",
    "train_only",
    multiple=True,
    metavar="PATTERN",
    help="Train only parameters or layers matching this glob. Repeatable.",
)
@click.option(
    "--extra-output",
    multiple=True,
    metavar="NAME",
    help="Keep this tensor as an output beside the loss. Repeatable.",
)
@click.option(
    "--ort-format",
    is_flag=True,
    help="Also write .ort files and required_operators.config, for mobile and minimal builds.",
)
@click.option(
    "--target",
    type=click.Choice(["desktop", "web", "mobile"]),
    default="desktop",
    show_default=True,
    help="Check what this runtime needs: web (onnxruntime-web 1.19.2), mobile (.ort files, implies --ort-format).",
)
@click.option(
    "--nominal-checkpoint",
    is_flag=True,
    help="Also write a nominal checkpoint (shapes only) for apps.",
)
@click.option(
    "--force", is_flag=True, help="Replace artifacts onnxfix made before in the output folder."
)
@click.option(
    "--no-self-test", is_flag=True, help="Skip the one-step check through the training API."
)
@click.option(
    "--ignore-index",
    type=int,
    metavar="N",
    help="Cross-entropy: labels equal to N (padding) count for nothing, in the loss and in accuracy.",
)
@click.option(
    "--self-test-data",
    type=click.Path(dir_okay=False),
    metavar="DATA.npz",
    help="Run the self-test's step on the first batch of this data instead of random batches.",
)
@click.option(
    "--full-self-test",
    is_flag=True,
    help="Run the self-test's optimizer step even when it needs more than 2.5x the weights (AdamW: about 4x).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail instead of freezing parameters that no gradient reaches on the CPU.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=D0,D1,...",
    help="Train with exactly this input shape, batch included; needed for inputs with named dims that ONNX Runtime cannot train dynamically. Repeatable.",
)
@click.option(
    "--split",
    is_flag=True,
    help="Write the frozen prefix as prefix_model.onnx and train only the rest on its outputs, which train computes once.",
)
def make_artifacts_cmd(
    model,
    output,
    loss,
    loss_input,
    optimizer,
    freeze,
    train_only,
    extra_output,
    betas,
    eps,
    weight_decay,
    momentum,
    ort_format,
    target,
    nominal_checkpoint,
    force,
    no_self_test,
    full_self_test,
    strict,
    input_shapes,
    split,
    self_test_data,
    ignore_index,
):
    """Build onnxruntime-training artifacts from MODEL with its fixed kernels frozen.

    Frozen: the tensors set-kernel recorded, plus --freeze. Everything else that the loss
    depends on trains (or only --train). A one-step self-test through the real training API
    checks the frozen tensors stay bit-identical; on a model whose optimizer step would need
    more than 2.5x its weights it runs forward and backward only, unless --full-self-test.
    """
    from onnxfix.commands.make_artifacts import make_artifacts

    result = make_artifacts(
        model,
        output,
        loss=loss,
        loss_input=loss_input,
        optimizer=optimizer,
        freeze=freeze,
        train=train_only,
        extra_outputs=extra_output,
        ort_format=ort_format,
        target=target,
        nominal_checkpoint=nominal_checkpoint,
        force=force,
        self_test=not no_self_test,
        full_self_test=full_self_test,
        strict=strict,
        input_shapes=_parse_shapes(input_shapes),
        split=split,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        self_test_data=self_test_data,
        ignore_index=ignore_index,
    )
    _print_artifacts(result)


def _optimizer_text(m) -> str:
    o = m.optimizer_settings
    if o is None or o.betas is None:
        return m.optimizer
    return f"{m.optimizer} (betas {o.betas[0]:g},{o.betas[1]:g}, eps {o.eps:g}, weight decay {o.weight_decay:g})"


def _print_split(split: SplitRecord, lead: str) -> None:
    click.echo(
        f"{lead} {len(split.cut)} tensors once; the artifacts train the rest (the head) on them"
    )
    for spec in split.cut:
        click.echo(f"  cut {spec.name!r}: {spec.dtype} {_fmt_dims(spec.shape)}")
    for name in split.passthrough:
        click.echo(f"  input {name!r} passes through to the head")
    params = split.prefix_parameters / split.total_parameters if split.total_parameters else 0
    macs = split.prefix_macs / split.total_macs if split.total_macs else 0
    click.echo(
        f"  prefix: {params:.0%} of the parameters ({split.prefix_parameters} of "
        f"{split.total_parameters}), {macs:.0%} of the compute ({split.prefix_macs} of "
        f"{split.total_macs} multiply-adds in Conv/Gemm/MatMul, static shapes)"
    )


def _print_artifacts(result: ArtifactsResult) -> None:
    m = result.manifest
    for note in m.changes + m.notes + tuple(result.target_notes):
        click.echo(f"note: {note}", err=True)
    for rewrite in m.rewrites:
        click.echo(f"note: training graph only: {rewrite}", err=True)
    click.echo(
        f"wrote {result.directory}: training_model.onnx, eval_model.onnx, optimizer_model.onnx, checkpoint"
    )
    click.echo(f"trainable: {len(m.trainable)} tensors, {m.trainable_bytes / 1e6:.2f} MB")
    click.echo(f"frozen:    {len(m.frozen)} tensors, {m.frozen_bytes / 1e6:.2f} MB")
    for name in m.frozen:
        tag = (
            f"fixed kernel, sha256 {m.fixed_kernels[name][:16]}"
            if name in m.fixed_kernels
            else "frozen"
        )
        click.echo(f"  {name} ({tag})")
    for parts in m.channel_parts.values():
        if parts.fixed_name in m.frozen:  # not in a --split prefix
            click.echo(f"  {parts.describe(parts.train_name in m.trainable)}")
    for reason in sorted(set(m.blocked.values())):
        names = [p for p, r in m.blocked.items() if r == reason]
        click.echo(f"frozen automatically: {len(names)} tensors upstream of {reason}")
    if m.excluded:
        click.echo(
            f"not trained: {len(m.excluded)} tensors the loss does not depend on (see onnxfix.json)"
        )
    if m.split is not None:
        _print_split(m.split, "split: prefix_model.onnx computes")
    click.echo(f"loss: {m.loss} on {m.loss_input!r}; optimizer: {_optimizer_text(m)}")
    for spec in m.feeds:
        click.echo(f"input {spec.name!r}: {spec.dtype} {_fmt_dims(spec.shape)}")
    if result.target != "desktop":
        click.echo(f"target {result.target}: checked (see the README, 'On the device')")
    st = result.selftest
    if isinstance(st, SelfTestSkipped):
        click.echo(f"self-test: skipped: {st.reason}")
    elif st is not None:
        ran = "one step ran" if st.optimizer_step else "forward and backward ran"
        click.echo(
            f"self-test: {ran}, loss {st.loss:.4g}, {st.frozen_checked} frozen tensors bit-identical"
        )
        if st.note is not None:
            click.echo(f"self-test: forward and backward only: {st.note}")
        if st.warning is not None:
            from onnxfix.errors import render_params

            click.echo(f"warning: self-test: {render_params(st.warning, FLAGS)}", err=True)


@cli.command("train")
@click.argument("artifacts", type=click.Path(file_okay=False))
@data_option("One array per model input plus the target, as make-artifacts reported.")
@click.option(
    "--val", type=click.Path(dir_okay=False), metavar="VAL.npz", help="Validation data, same keys."
)
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Default: the model's fixed batch size, else 32.",
)
@click.option("--lr", type=float, help="Learning rate (default: the optimizer's, 0.001).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for shuffling.")
@click.option(
    "--checkpoint-out",
    type=click.Path(dir_okay=False),
    help="Where to save the trained checkpoint (default: ARTIFACTS/checkpoint).",
)
@click.option(
    "--log-every", type=click.IntRange(min=1), metavar="N", help="Also print a line every N steps."
)
@click.option(
    "--log",
    "log_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write every line as JSON lines (or CSV for a .csv name): epoch, step, loss, metrics, learning rate, time.",
)
@click.option(
    "--save-every-epoch",
    is_flag=True,
    help="Save CHECKPOINT.epochN after each epoch, with the optimizer state (for --resume).",
)
@click.option(
    "--keep-best",
    type=click.Choice(["val-loss", "val-accuracy"]),
    help="Keep the best epoch's checkpoint in CHECKPOINT.best (needs --val).",
)
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    metavar="CHECKPOINT",
    help="Go on from a checkpoint saved by --save-every-epoch or --keep-best, up to --epochs.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    metavar="LOSS.png",
    help="Draw the loss (and accuracy) curves when training ends (needs 'onnxfix[plot]').",
)
def train_cmd(
    artifacts,
    data,
    val,
    epochs,
    batch_size,
    lr,
    seed,
    checkpoint_out,
    log_every,
    log_file,
    save_every_epoch,
    keep_best,
    resume,
    plot,
):
    """Fine-tune with the on-device training loop (the same API calls an app makes).

    Prints a line per epoch as it ends (and every --log-every steps): the loss, and accuracy
    for cross-entropy and bce. Checks at the end that the fixed kernels are bit-identical,
    then saves the checkpoint.
    """
    from onnxfix.commands.train import train

    tty = sys.stderr.isatty()

    def progress(epoch: int, step: int, steps: int, loss: float) -> None:
        width = 30
        done = width * step // steps
        bar = f"epoch {epoch} [{'#' * done}{'.' * (width - done)}] {step}/{steps} loss {loss:.4f}"
        click.echo(f"\r{bar}", err=True, nl=step == steps)

    def feature_progress(done: int, total: int) -> None:
        click.echo(f"\rprefix: {done}/{total} samples", err=True, nl=done == total)

    def on_log(entry) -> None:
        if tty:
            click.echo("\r\033[K", err=True, nl=False)  # clear the progress bar's line
        acc = f", accuracy {entry.accuracy:.4f}" if entry.accuracy is not None else ""
        click.echo(
            f"epoch {entry.epoch} step {entry.step}/{entry.steps}: loss {entry.loss:.4f}{acc}"
        )

    def on_epoch(e) -> None:
        parts = [f"train loss {e.train_loss:.4f}"]
        if e.train_accuracy is not None:
            parts.append(f"accuracy {e.train_accuracy:.4f}")
        if e.val_loss is not None:
            parts.append(f"val loss {e.val_loss:.4f}")
        if e.val_accuracy is not None:
            parts.append(f"val accuracy {e.val_accuracy:.4f}")
        click.echo(f"epoch {e.epoch}: {', '.join(parts)} ({e.seconds:.1f} s)")
        for path in e.saved:
            click.echo(f"  saved {path}")

    result = train(
        artifacts,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val=val,
        checkpoint_out=checkpoint_out,
        progress=progress if tty else None,
        feature_progress=feature_progress if tty else None,
        on_epoch=on_epoch,
        log_every=log_every,
        on_log=on_log,
        log=log_file,
        save_every_epoch=save_every_epoch,
        keep_best=keep_best,
        resume=resume,
        plot=plot,
    )

    for data_file, f in zip((data, val), result.features):
        state = "reused" if f.reused else "computed"
        click.echo(f"features of {data_file}: {state}, {f.files[0].parent}", err=True)
    if result.resumed_from:
        click.echo(f"resumed after epoch {result.resumed_from} from {resume}", err=True)
    if result.dropped:
        click.echo(
            f"note: {result.dropped} samples per epoch left out (fixed batch size)", err=True
        )
    click.echo(f"fixed kernels unchanged: {result.fixed_checked} checked")
    click.echo(f"saved {result.checkpoint}")
    if plot is not None:
        click.echo(f"wrote {plot}")


@cli.command("evaluate")
@click.argument("target", metavar="ARTIFACTS|MODEL", type=click.Path())
@data_option("The arrays train takes: the model's inputs and the target.")
@click.option(
    "--loss",
    "loss_kind",
    type=click.Choice([x for x in LOSSES if x != "none"]),
    help="For a model file: how to score its output (artifacts use their own loss).",
)
@click.option(
    "--output", "output_name", help="For a model file: the output to score (default: the first)."
)
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False), help="For artifacts: another checkpoint."
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the model's, else 32.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate_cmd(target, data, loss_kind, output_name, checkpoint, batch_size, as_json):
    """Loss and accuracy of ARTIFACTS (their eval model) or of a MODEL file on DATA; no training."""
    from onnxfix.commands.evaluate import evaluate

    r = evaluate(
        target, data, loss=loss_kind, output=output_name, checkpoint=checkpoint,
        batch_size=batch_size,
    )  # fmt: skip
    if as_json:
        click.echo(
            json.dumps(
                {
                    "samples": r.samples,
                    "loss": r.loss,
                    "accuracy": r.accuracy,
                    "loss_kind": r.loss_kind,
                }
            )
        )
        return
    acc = f", accuracy {r.accuracy:.4f}" if r.accuracy is not None else ""
    click.echo(f"{r.loss_kind} loss {r.loss:.4f}{acc} on {r.samples} samples ({r.scored})")


@cli.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@data_option("One array per model input.")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="OUT.npz",
    help="The outputs, one array per model output.",
)  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the model's, else 32.")
def predict_cmd(model, data, output, batch_size):
    """Run MODEL on DATA's inputs and write its outputs to OUT.npz."""
    from onnxfix.commands.evaluate import predict

    shapes = predict(model, data, output, batch_size=batch_size)
    described = ", ".join(f"{n} {_fmt_dims(list(s))}" for n, s in shapes.items())
    click.echo(f"wrote {output} ({described})")


@cli.command("show")
@click.argument("source", metavar="MODEL|ARTIFACTS|CHECKPOINT", type=click.Path())
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="KERNELS.png",
    help="The picture to write.",
)  # fmt: skip
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="A conv to draw (name, weight or glob). Repeatable; default: the first 8.",
)
@click.option(
    "--before",
    type=click.Path(),
    metavar="MODEL|ARTIFACTS|CHECKPOINT",
    help="Draw each layer as this holds it too, above (e.g. the untrained artifacts).",
)
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False), help="For artifacts: another checkpoint."
)
def show_cmd(source, output, layers, before, checkpoint):
    """Draw conv kernels as a picture: a tile per output channel, fixed ones outlined and labelled.

    Needs matplotlib: pip install 'onnxfix[plot]'.
    """
    from onnxfix.commands.show import show

    result = show(source, output, layers=layers, before=before, checkpoint=checkpoint)
    click.echo(f"wrote {result.output} ({len(result.layers)} layers: {', '.join(result.layers)})")


@cli.command("features")
@click.argument("artifacts", type=click.Path(file_okay=False))
@data_option("One array per model input plus the target, as for train.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="FEATURES.npz",
    help="The file to write: one array per head input, plus the target.",
)
def features_cmd(artifacts, data, output):
    """Run the frozen prefix of split artifacts over DATA once and write its outputs.

    For artifacts made with make-artifacts --split: the head's training inputs (the cut
    tensors, the inputs passed through) and the target, named as the training graph takes them.
    """
    from onnxfix.commands.features import compute_features

    result = compute_features(artifacts, data, output)
    for name, shape in result.arrays.items():
        click.echo(f"{name!r}: {_fmt_dims(shape)}")
    click.echo(f"wrote {result.output}" + (" (from the artifacts' cache)" if result.reused else ""))


@cli.command("export")
@click.argument("artifacts", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The inference model to write.",
)
@click.option(
    "--checkpoint", type=click.Path(), help="Checkpoint to export (default: ARTIFACTS/checkpoint)."
)
@click.option(
    "--parameters",
    type=click.Path(dir_okay=False),
    metavar="FILE.npz",
    help="Trained parameters by name (the web page's download); they replace the checkpoint's.",
)
def export_cmd(artifacts, output, checkpoint, parameters):
    """Write the fine-tuned inference model: original outputs, no loss, fixed kernels intact."""
    from onnxfix.commands.export import export_model

    result = export_model(artifacts, output, checkpoint=checkpoint, parameters=parameters)
    where = "the checkpoint" if parameters is None else f"the checkpoint and {parameters}"
    click.echo(
        f"wrote {result.output} (outputs: {', '.join(result.outputs)}; "
        f"{result.parameters} parameters from {where}; {result.fixed_checked} fixed kernels intact)"
    )


@cli.command("web")
@click.argument("artifacts", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="The site folder to write.")
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    metavar="DATA.npz",
    help="Bundle this data with the page (the arrays train takes).",
)
@click.option(
    "--ort-web",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The onnxruntime-web 1.19.2 npm package (default: $ONNXFIX_ORT_WEB, else "
    "./node_modules/onnxruntime-web).",
)
@click.option("--force", is_flag=True, help="Replace a site folder written before.")
def web_cmd(artifacts, output, data, ort_web, force):
    """Write a static web page that trains ARTIFACTS in the browser (onnxruntime-web).

    The folder holds the page, the artifacts and onnxruntime-web's files; serve it on
    127.0.0.1 and open it. The trained parameters it downloads go back through
    'onnxfix export ARTIFACTS --parameters FILE.npz'.
    """
    from onnxfix.commands.web import make_site

    result = make_site(artifacts, output, data=data, ort_web=ort_web, force=force)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    sample = f", sample data: {result.sample} samples" if result.sample is not None else ""
    click.echo(f"wrote {result.directory} (onnxruntime-web from {result.ort_web}{sample})")
    click.echo(
        f"serve it and open the page: python -m http.server --bind 127.0.0.1 --directory "
        f"{shlex.quote(str(result.directory))} 8000, then http://127.0.0.1:8000/"
    )


@cli.command("verify")
@click.argument("path", type=click.Path())
def verify_cmd(path):
    """Prove the fixed kernels in PATH (model, artifacts folder or checkpoint) are unchanged.

    Exit 0 when every recorded kernel matches its SHA-256, 1 otherwise.
    """
    from onnxfix.commands.verify import verify

    report = verify(path)
    for c in report.checks:
        what = c.name
        if c.fixed_channels is not None:
            from onnxfix.channels import channel_ranges

            what += f", channels {channel_ranges(c.fixed_channels)}"
        if c.ok:
            click.echo(f"ok       {what} (layer {c.layer})")
        elif c.problem in ("missing", "reshaped"):
            click.echo(f"{c.problem.upper():<8} {what} (layer {c.layer})")
        elif c.changed_channels:
            for channel, gap in c.changed_channels.items():
                diff = f": largest absolute difference {gap:g}" if gap is not None else ""
                click.echo(f"CHANGED  {c.name}, channel {channel} (layer {c.layer}){diff}")
        else:
            diff = (
                f"largest absolute difference {c.max_abs_diff:g}"
                if c.max_abs_diff is not None
                else "values differ"
            )
            click.echo(f"CHANGED  {what} (layer {c.layer}): {diff}")
    if not report.ok:
        bad = [c.name for c in report.checks if not c.ok]
        raise VerifyError(
            f"{len(bad)} of {len(report.checks)} fixed kernels differ from their record: {', '.join(bad)}"
        )
    click.echo(f"all {len(report.checks)} fixed kernels match their record")


@cli.command("kernels")
def kernels_cmd() -> None:
    """List the named filters --kernel accepts, with their parameters."""
    from onnxfix.kernels.filters import list_filters

    for info in list_filters():
        params = ", ".join(f"{p.name}={p.default}" for p in info.params) or "no parameters"
        click.echo(f"{info.name:<12} {info.summary}")
        click.echo(f"{'':<12} sizes: {info.sizes}; parameters: {params}")


def main() -> None:
    """The ``onnxfix`` console command.

    It ends with ``os._exit`` once the command has finished and its output is flushed: the
    interpreter's teardown with numpy, onnx and protobuf loaded takes 0.05-0.1 s here, a
    fifth of what set-kernel on a 1 GB model costs beyond the copy. Nothing is lost by skipping
    it: every file onnxfix writes is closed and renamed, and every temporary folder removed,
    before the command returns, and no thread outlives it. An exception that is a bug still
    ends the normal way, with its traceback.
    """
    try:
        cli(prog_name="onnxfix")
    except SystemExit as e:  # click always ends this way
        code = e.code
    else:  # pragma: no cover - standalone click raises SystemExit
        code = 0
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the reader went away
            pass
    os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()

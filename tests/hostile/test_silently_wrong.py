"""Silently wrong: input that used to be accepted and give a wrong result with exit 0.

NaN or infinite training data and learning rates trained NaN weights and saved them over the
last good checkpoint (and export and verify passed them on); class labels outside the model's
classes trained on nothing, or crashed ONNX Runtime (labels of 10**12: SIGSEGV); a model
edited after set-kernel was frozen and certified "bit-identical"; ``--channels 0:999`` was
clamped; a build child killed from outside was blamed on the model's dynamic dims.

Each case runs the real command (real ONNX Runtime training, the bundled sample or a small
model from tests/support/factories.py) in the sandbox and asserts the exit code, the exact
message, and that no input changed and nothing new was written (the checkpoint a diverged run
would have overwritten stays byte-identical).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxfix.commands.make_artifacts as make_artifacts_module
from onnxfix import TrainingDataError, train
from onnxfix.commands.make_artifacts import make_artifacts
from onnxfix.commands.set_kernel import set_kernel
from onnxfix.provenance import PROVENANCE_KEY
from tests.support.cli import onnxfix
from tests.support.factories import save, simple_cnn
from tests.support.hostile import Sandbox, refused
from tests.support.paths import SAMPLES, SUPPORT

SAMPLE = SAMPLES / "edge_cnn.onnx"  # 4-channel first conv 'edges', 2 classes, dynamic batch
TRAIN = np.load(SAMPLES / "edges_train.npz")  # 256 images, labels 0/1
VAL = np.load(SAMPLES / "edges_val.npz")  # 64
IMAGE, LABELS = TRAIN["image"], TRAIN["labels"]
FINITE = "training data must be finite: repair or drop the samples that hold NaN or infinity"
CLASSES = "cross-entropy on 'logits' has 2 classes, so a label must be a class index from 0 to 1"
BCE = "bce compares each output with a target from 0 to 1 (a probability; 0 or 1 for a hard label)"
CHECKPOINT = "models/art/checkpoint"
KEPT = f"nothing was saved, {CHECKPOINT!r} keeps its previous values"


@pytest.fixture(autouse=True)
def in_sandbox(sandbox: Sandbox, monkeypatch) -> None:
    """Commands run from the sandbox's root, so messages name 'models/...'."""
    monkeypatch.chdir(sandbox.root)


# ------------------------------------------------------------------------------ artifacts


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Artifacts, made once: the sample with cross-entropy (its first conv fixed), and
    simple_cnn (fixed batch 1, 10 outputs) with mse and with bce."""
    folder = tmp_path_factory.mktemp("built")
    set_kernel(SAMPLE, folder / "edge.onnx", layers=["edges"], kernel="sobel-x")
    make_artifacts(folder / "edge.onnx", folder / "edge", loss="cross-entropy")
    save(simple_cnn(), folder / "cnn.onnx")
    set_kernel(folder / "cnn.onnx", folder / "fixed.onnx", layers=["conv1"], kernel="sobel-x")
    for loss in ("mse", "bce"):
        make_artifacts(folder / "fixed.onnx", folder / loss, loss=loss, self_test=False)
    return {"edge": folder / "edge", "mse": folder / "mse", "bce": folder / "bce"}


def artifacts(built: dict[str, Path], sandbox: Sandbox, kind: str = "edge") -> Path:
    """A copy of the artifacts in models/art: a refusal must leave all of it as it was."""
    return Path(shutil.copytree(built[kind], sandbox.models / "art")).relative_to(sandbox.root)


def edge_data(sandbox: Sandbox, name: str = "d.npz", *, image=None, labels=None) -> str:
    np.savez(
        sandbox.models / name,
        image=IMAGE if image is None else image,
        labels=LABELS if labels is None else labels,
    )
    return f"models/{name}"


def cnn_data(sandbox: Sandbox, name: str = "d.npz", *, target=None, count: int = 4) -> str:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(count, 3, 16, 16)).astype(np.float32)
    t = rng.uniform(size=(count, 10)).astype(np.float32) if target is None else target
    np.savez(sandbox.models / name, x=x, target=t)
    return f"models/{name}"


def poked(array: np.ndarray, *changes: tuple[tuple[int, ...], float]) -> np.ndarray:
    out = array.copy()
    for index, value in changes:
        out[index] = value
    return out


# ----------------------------------------------------- non-finite training data, by array


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            [((3, 0, 5, 7), np.nan)],
            f"image[3, 0, 5, 7] is nan (1 of 262144 values of 'image' is not finite); {FINITE}",
        ),
        (
            [((200, 0, 31, 31), -np.inf), ((0, 0, 0, 1), np.inf)],
            f"image[0, 0, 0, 1] is inf (2 of 262144 values of 'image' are not finite); {FINITE}",
        ),
        (
            [((255, 0, 31, 31), -np.inf)],
            f"image[255, 0, 31, 31] is -inf (1 of 262144 values of 'image' is not finite); {FINITE}",
        ),
    ],
    ids=["nan", "inf", "-inf"],
)
def test_non_finite_inputs_are_refused_before_training(built, sandbox, run, changes, message):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox, image=poked(IMAGE, *changes))
    watch = sandbox.watch()
    refused(run("train", art, "--data", data), f"'models/d.npz': {message}", watch)


def test_non_finite_validation_inputs_are_refused_before_training(built, sandbox, run):
    art = artifacts(built, sandbox)
    val = edge_data(
        sandbox, "v.npz", image=poked(VAL["image"], ((10, 0, 1, 2), np.nan)), labels=VAL["labels"]
    )
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", edge_data(sandbox), "--val", val),
        f"'models/v.npz': image[10, 0, 1, 2] is nan (1 of 65536 values of 'image' is not "
        f"finite); {FINITE}",
        watch,
        allowed=["models/d.npz"],
    )


@pytest.mark.parametrize(
    ("flag", "value", "shown"), [("--data", np.nan, "nan"), ("--val", np.inf, "inf")]
)
def test_non_finite_targets_are_refused(built, sandbox, run, flag, value, shown):
    art = artifacts(built, sandbox, "mse")
    good = cnn_data(sandbox)
    bad = cnn_data(sandbox, "bad.npz", target=poked(np.zeros((4, 10), np.float32), ((2, 7), value)))
    args = ["--data", bad] if flag == "--data" else ["--data", good, "--val", bad]
    watch = sandbox.watch()
    refused(
        run("train", art, *args),
        f"'models/bad.npz': target[2, 7] is {shown} (1 of 40 values of 'target' is not "
        f"finite); {FINITE}",
        watch,
    )


def test_values_beyond_float32_are_refused_not_cast_to_inf(built, sandbox, run):
    art = artifacts(built, sandbox)
    image = poked(IMAGE.astype(np.float64), ((9, 0, 0, 0), 1e300))
    data = edge_data(sandbox, image=image)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data),
        "'models/d.npz': image[9, 0, 0, 0] is 1e+300, beyond the largest float32 value, which "
        "'image' takes; scale the data down",
        watch,
    )


# --------------------------------------------------------------------------- learning rate


@pytest.mark.parametrize(
    ("lr", "shown"),
    [("-1", "-1.0"), ("0", "0.0"), ("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")],
)
def test_learning_rates_that_are_not_are_refused(built, sandbox, run, lr, shown):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data, "--lr", lr),
        f"--lr {shown} is not a learning rate: give a finite number above 0, such as 0.001",
        watch,
    )


def test_the_library_names_its_parameter(built, sandbox):
    art = artifacts(built, sandbox)
    with pytest.raises(TrainingDataError) as e:
        train(art, edge_data(sandbox), lr=-1.0)
    assert str(e.value) == (
        "lr -1.0 is not a learning rate: give a finite number above 0, such as 0.001"
    )


def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(built, sandbox, run):
    """--lr 1e30: the first step's update makes the weights ~1e30, the second step's loss is
    NaN. Before, 'train loss nan' and exit 0, the NaN checkpoint saved over the good one."""
    art = artifacts(built, sandbox)
    data = edge_data(sandbox)
    good = (sandbox.root / CHECKPOINT).read_bytes()
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data, "--lr", "1e30", "--epochs", "2"),
        f"training diverged at epoch 1, step 2 of 8: the loss is nan; {KEPT}. Lower --lr (it "
        "was 1e+30), or check the data",
        watch,
    )
    assert (sandbox.root / CHECKPOINT).read_bytes() == good
    # And the checkpoint left is a good one: it exports.
    r = run("export", art, "-o", "out/fine.onnx")
    assert r.exit_code == 0, r.output


def test_a_diverging_run_writes_no_checkpoint_out(built, sandbox, run):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data, "--lr", "1e30", "--checkpoint-out", "out/ck"),
        "training diverged at epoch 1, step 2 of 8: the loss is nan; nothing was saved. Lower "
        "--lr (it was 1e+30), or check the data",
        watch,
    )


def test_a_weight_made_non_finite_by_the_last_step_is_caught_before_saving(built, sandbox, run):
    """One step per epoch (the whole data in a batch): its loss was finite, no later loss
    would show the NaN weights; the check at the epoch's end does."""
    art = artifacts(built, sandbox)
    data = edge_data(sandbox)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data, "--lr", "1e39", "--batch-size", "256"),
        f"training diverged at epoch 1, step 1 of 1: parameter 'edges.bias' became nan; {KEPT}. "
        "Lower --lr (it was 1e+39), or check the data",
        watch,
    )


def test_a_non_finite_validation_loss_stops_training(built, sandbox, run):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox)
    val = edge_data(sandbox, "v.npz", image=VAL["image"], labels=VAL["labels"])
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data, "--val", val, "--lr", "1e37", "--batch-size", "256"),
        f"training diverged after epoch 1: the validation loss is nan; {KEPT}. Lower --lr (it "
        "was 1e+37), or check the data",
        watch,
    )


def test_export_refuses_a_checkpoint_with_non_finite_weights(built, sandbox, run):
    """A NaN checkpoint as an app on a device may save one (train no longer does): one value
    of head.weight (2x8 float32) overwritten in the file."""
    from onnxfix.training.checkpoint import read_checkpoint

    art = artifacts(built, sandbox)
    stored = read_checkpoint(sandbox.root / CHECKPOINT).parameters["head.weight"]
    assert stored.dims == (2, 8)
    with open(stored.path, "r+b") as f:
        f.seek(stored.offset + (1 * 8 + 3) * 4)
        f.write(np.float32(np.nan).tobytes())
    watch = sandbox.watch()
    refused(
        run("export", art, "-o", "out/fine.onnx"),
        f"checkpoint {CHECKPOINT!r} holds nan in parameter 'head.weight' at [1, 3]: the "
        "training that saved it diverged; nothing was written. Export a checkpoint saved "
        "before that, or train again with a lower learning rate",
        watch,
    )


# ------------------------------------------------------------------------------- labels


def _first(mask: np.ndarray) -> tuple[int, int]:
    return int(np.argmax(mask)), int(np.count_nonzero(mask))


def test_one_based_labels_are_refused_and_recognised(built, sandbox, run):
    """Before: exit 0, loss 0.70, class 1 trained as class 0 and class 2 as nothing."""
    art = artifacts(built, sandbox)
    data = edge_data(sandbox, labels=LABELS + 1)
    at, count = _first(LABELS == 1)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data),
        f"'models/d.npz': labels[{at}] is 2 ({count} of 256 values of 'labels' are outside 0 to "
        f"1); {CLASSES}. The labels look one-based (1 to 2): subtract 1",
        watch,
    )


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [
        (2, np.int64, "2"),  # = the class count
        (7, np.int64, "7"),
        (-1, np.int64, "-1"),  # trained with loss 0.0000: ONNX Runtime ignores it
        (-(10**12), np.int64, "-1000000000000"),
        (2**63 + 5, np.uint64, "9223372036854775813"),  # negative once cast to int64
    ],
)
def test_labels_outside_the_classes_are_refused(built, sandbox, run, value, dtype, shown):
    art = artifacts(built, sandbox)
    labels = LABELS.astype(dtype)
    labels[17] = value
    data = edge_data(sandbox, labels=labels)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data),
        f"'models/d.npz': labels[17] is {shown} (1 of 256 values of 'labels' is outside 0 to "
        f"1); {CLASSES}",
        watch,
    )


def test_huge_labels_are_refused_instead_of_crashing_onnxruntime(built, sandbox):
    """Labels of 10**12 made ONNX Runtime read out of bounds: SIGSEGV, exit -11. A real
    process, so that a crash shows as one."""
    art = artifacts(built, sandbox)
    data = edge_data(sandbox, labels=np.full_like(LABELS, 10**12))
    watch = sandbox.watch()
    proc = onnxfix("train", art, "--data", data, cwd=sandbox.root)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        "Error: 'models/d.npz': labels[0] is 1000000000000 (256 of 256 values of 'labels' are "
        f"outside 0 to 1); {CLASSES}\n"
    )
    assert proc.stdout == ""
    assert not watch.changes()


def test_labels_in_the_validation_data_are_checked_too(built, sandbox, run):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox)
    val = edge_data(
        sandbox, "v.npz", image=VAL["image"], labels=poked(VAL["labels"], ((63,), 10**12))
    )
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data, "--val", val),
        f"'models/v.npz': labels[63] is 1000000000000 (1 of 64 values of 'labels' is outside 0 "
        f"to 1); {CLASSES}",
        watch,
    )


@pytest.mark.parametrize(("value", "shown"), [(0.5, "0.5"), (np.nan, "nan"), (np.inf, "inf")])
def test_float_labels_that_are_not_class_indices_are_refused(built, sandbox, run, value, shown):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox, labels=poked(LABELS.astype(np.float32), ((3,), value)))
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data),
        f"'models/d.npz': labels[3] is {shown} (1 of 256 values of 'labels' is not a whole "
        f"number); {CLASSES}",
        watch,
    )


def test_whole_float_labels_still_train(built, sandbox, run):
    art = artifacts(built, sandbox)
    data = edge_data(sandbox, labels=LABELS.astype(np.float32))
    r = run("train", art, "--data", data)
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith(f"saved {CHECKPOINT}\n")


@pytest.mark.parametrize(("value", "shown"), [(2.0, "2"), (-1.0, "-1")])
def test_bce_targets_outside_0_to_1_are_refused(built, sandbox, run, value, shown):
    art = artifacts(built, sandbox, "bce")
    target = poked(np.zeros((4, 10), np.float32), ((1, 3), value))
    data = cnn_data(sandbox, target=target)
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", data),
        f"'models/d.npz': target[1, 3] is {shown} (1 of 40 values of 'target' is outside 0 to "
        f"1); {BCE}",
        watch,
    )


def test_bce_takes_probabilities(built, sandbox, run):
    art = artifacts(built, sandbox, "bce")
    data = cnn_data(sandbox, target=np.full((4, 10), 0.25, np.float32))
    r = run("train", art, "--data", data)
    assert r.exit_code == 0, r.output


# ------------------------------------------------------- a model edited after set-kernel


def _fixed_model(sandbox: Sandbox, *, external: bool = False) -> Path:
    """simple_cnn with conv1 fixed by set-kernel, then conv1.weight's first value changed by
    hand (its record left as set-kernel wrote it)."""
    save(simple_cnn(), sandbox.models / "m.onnx", external=external)
    fixed = sandbox.models / "f.onnx"
    set_kernel(sandbox.models / "m.onnx", fixed, layers=["conv1"], kernel="sobel-x")
    if external:  # conv1.weight is the first 864 bytes of f.onnx.data
        data = bytearray((sandbox.models / "f.onnx.data").read_bytes())
        data[0:4] = np.float32(5.0).tobytes()
        (sandbox.models / "f.onnx.data").write_bytes(bytes(data))
        return fixed
    model = onnx.load(str(fixed))
    tensor = next(t for t in model.graph.initializer if t.name == "conv1.weight")
    values = onnx.numpy_helper.to_array(tensor).copy()
    values[0, 0, 0, 0] = 5.0
    tensor.CopyFrom(onnx.numpy_helper.from_array(values, "conv1.weight"))
    onnx.save(model, str(fixed))
    return fixed


def _edited(model: str) -> str:
    return (
        "fixed kernel 'conv1.weight' no longer matches its record (sha256 "
        "{recorded} recorded, {now} now): the model was changed after set-kernel; run "
        f"onnxfix verify {model} to see the difference, or set the kernel again"
    )


def _digests(path: Path) -> dict[str, str]:
    from onnxfix.modelio.modelfile import load_model
    from onnxfix.provenance import read_provenance, tensor_digest

    mf = load_model(path)
    record = read_provenance(mf.model)["conv1.weight"].sha256
    tensor = next(t for t in mf.model.graph.initializer if t.name == "conv1.weight")
    return {"recorded": record[:16], "now": tensor_digest(mf.read_array(tensor))[:16]}


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external"])
def test_make_artifacts_refuses_a_model_edited_after_set_kernel(sandbox, run, external):
    """Before: built, the edited values frozen, and the self-test said 'bit-identical'."""
    fixed = _fixed_model(sandbox, external=external)
    watch = sandbox.watch()
    refused(
        run("make-artifacts", "models/f.onnx", "-o", "out/art"),
        _edited(str(fixed.resolve())).format(**_digests(fixed)),
        watch,
    )


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external"])
def test_inspect_trainable_says_the_same(sandbox, run, external):
    fixed = _fixed_model(sandbox, external=external)
    watch = sandbox.watch()
    refused(
        run("inspect", "--trainable", "models/f.onnx"),
        _edited("models/f.onnx").format(**_digests(fixed)),
        watch,
    )


def test_verify_shows_the_difference_the_message_points_to(sandbox, run):
    _fixed_model(sandbox)
    r = run("verify", "models/f.onnx")
    assert r.exit_code == 1
    assert r.stdout.startswith("CHANGED  conv1.weight (layer conv1): largest absolute difference")


# ----------------------------------------------------------------- malformed provenance

SHA = "a" * 64
RECORDS = {
    # what the metadata value holds -> what the message says is wrong with it
    "truncated": (b"{", "is not valid JSON (Expecting property name enclosed in double quotes)"),
    "not-utf8": (
        b'{"conv1.weight": {"sha256": "\xff\xfe"}}',
        "is not valid JSON (byte 29 is not UTF-8)",
    ),
    "long-number": (
        b'{"conv1.weight": {"sha256": "' + SHA.encode() + b'", "shape": [' + b"9" * 5000 + b"]}}",
        "is not valid JSON (a number too long to read)",
    ),
    "surrogate-name": (
        b'{"\\ud800": {"sha256": "' + SHA.encode() + b'"}}',
        "names a tensor '\\ud800' that is not valid text",
    ),
    "surrogate-layer": (
        b'{"conv1.weight": {"sha256": "' + SHA.encode() + b'", "layer": "\\udfff"}}',
        "of 'conv1.weight' has a layer that is not a string",
    ),
}


def _with_record(path: Path, value: bytes) -> Path:
    """simple_cnn whose provenance metadata holds ``value`` byte for byte (protobuf will not
    set a string that is not UTF-8, so the bytes are spliced in)."""
    model = simple_cnn()
    placeholder = b"P" * len(value)
    model.metadata_props.add(key=PROVENANCE_KEY, value=placeholder.decode())
    data = model.SerializeToString()
    assert data.endswith(placeholder)  # the last field written
    path.write_bytes(data[: -len(placeholder)] + value)
    return path


COMMANDS = {
    "inspect": ["inspect", "models/m.onnx"],
    "inspect-trainable": ["inspect", "--trainable", "models/m.onnx"],
    "verify": ["verify", "models/m.onnx"],
    "set-kernel": [
        "set-kernel",
        "models/m.onnx",
        "--layer",
        "conv2",
        "--kernel",
        "box",
        "-o",
        "out/f.onnx",
    ],
    "make-artifacts": ["make-artifacts", "models/m.onnx", "-o", "out/art"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("record", RECORDS)
def test_a_malformed_record_is_a_clean_error_in_every_command(sandbox, run, record, command):
    value, problem = RECORDS[record]
    model = _with_record(sandbox.models / "m.onnx", value)
    source = str(model.resolve()) if command == "make-artifacts" else "models/m.onnx"
    end = "; re-run set-kernel on the original model"
    watch = sandbox.watch()
    refused(
        run(*COMMANDS[command]),
        f"{source}: the {PROVENANCE_KEY!r} record {problem}{end}",
        watch,
    )


def test_export_refuses_a_malformed_record_in_the_inference_model(built, sandbox, run):
    art = artifacts(built, sandbox)
    inference = sandbox.models / "art" / "inference_model.onnx"
    model = onnx.load(str(inference))
    for prop in model.metadata_props:
        if prop.key == PROVENANCE_KEY:
            prop.value = '{"edges.weight": []}'
    onnx.save(model, str(inference))
    watch = sandbox.watch()
    refused(
        run("export", art, "-o", "out/fine.onnx"),
        "models/art/inference_model.onnx: the 'onnxfix.fixed_kernels' record of 'edges.weight' "
        "is not an object; re-run set-kernel on the original model",
        watch,
    )


def test_train_refuses_a_malformed_record_in_the_manifest(built, sandbox, run):
    art = artifacts(built, sandbox)
    manifest = sandbox.models / "art" / "onnxfix.json"
    obj = json.loads(manifest.read_text())
    obj["provenance"]["edges.weight"]["sha256"] = "not a digest"
    manifest.write_text(json.dumps(obj))
    watch = sandbox.watch()
    refused(
        run("train", art, "--data", edge_data(sandbox)),
        "'models/art/onnxfix.json': the 'onnxfix.fixed_kernels' record of 'edges.weight' has no "
        "'sha256' of 64 hex digits; re-run set-kernel on the original model",
        watch,
        allowed=["models/d.npz"],
    )


# ----------------------------------------------------------------------------- --channels

RANGE = "which has 4 output channels (0 to 3; a range like 0:4 ends at 4)"


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ("0:999", f"--channels '0:999': 999 is out of range for layer '/edges/Conv', {RANGE}"),
        ("-999:2", f"--channels '-999:2': -999 is out of range for layer '/edges/Conv', {RANGE}"),
        ("5:5", f"--channels '5:5': 5 is out of range for layer '/edges/Conv', {RANGE}"),
        ("0,2:9", f"--channels '0,2:9': 9 is out of range for layer '/edges/Conv', {RANGE}"),
        (
            "::0",
            "--channels '::0': a range's step cannot be 0; write e.g. '0:4:2' for every other "
            "channel",
        ),
        (
            "0:4:0",
            "--channels '0:4:0': a range's step cannot be 0; write e.g. '0:4:2' for every other "
            "channel",
        ),
        (
            "4:4",
            "--channels '4:4' selects no output channel of layer '/edges/Conv', which has 4 "
            "output channels",
        ),
        (
            "99",
            "--channels '99': channel 99 is out of range for layer '/edges/Conv', which has 4 "
            "output channels (0 to 3)",
        ),
    ],
    ids=["0:999", "-999:2", "5:5", "0,2:9", "::0", "0:4:0", "4:4", "99"],
)
def test_channel_ranges_are_checked_not_clamped(sandbox, run, channels, message):
    """Before: 0:999 set channels 0 to 3 and recorded '0:999', while 99 was refused."""
    model = shutil.copy(SAMPLE, sandbox.models / "m.onnx")
    watch = sandbox.watch()
    refused(
        run(
            "set-kernel",
            model,
            "--layer",
            "edges",
            "--kernel",
            "sobel-x",
            "--channels",
            channels,
            "-o",
            "out/f.onnx",
        ),
        message,
        watch,
    )


def test_channel_ranges_inside_still_work(sandbox, run):
    model = shutil.copy(SAMPLE, sandbox.models / "m.onnx")
    for channels in ("0:4", "-4:", "::-1", "1:3", "-1"):
        r = run(
            "set-kernel",
            model,
            "--layer",
            "edges",
            "--kernel",
            "sobel-x",
            "--channels",
            channels,
            "-o",
            "out/f.onnx",
        )
        assert r.exit_code == 0, (channels, r.output)


# ------------------------------------------------------------- who is blamed for a crash


@pytest.fixture
def build_task(monkeypatch):
    """make-artifacts' build child replaced by one that dies as asked (tests/support/crashers.py):
    a real child process, a real signal."""
    monkeypatch.setenv("PYTHONPATH", str(SUPPORT))
    real = make_artifacts_module.run_isolated

    def use(task: str) -> None:
        def run_isolated(name, job, workdir, **kwargs):
            return real(task if name == "build" else name, job, workdir, **kwargs)

        monkeypatch.setattr(make_artifacts_module, "run_isolated", run_isolated)

    return use


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            "crashers:killed",
            "the crashers:killed process was killed (SIGKILL) while building the gradient graph: "
            "a kill from outside, not a crash in onnxruntime, most often the system's "
            "out-of-memory killer; onnxfix stopped and wrote nothing. Check the free memory (the "
            "kernel's log says if it ran out) and run again",
        ),
        (
            "crashers:stopped",
            "the crashers:stopped process was stopped (SIGTERM) while building the gradient "
            "graph: a signal from outside (a kill command, a job's time limit), not a crash in "
            "onnxruntime; onnxfix stopped and wrote nothing. Run again",
        ),
    ],
    ids=["SIGKILL", "SIGTERM"],
)
def test_a_build_killed_from_outside_is_not_blamed_on_the_model(
    sandbox, run, build_task, task, message
):
    """The sample has a dynamic batch dim: before, a kill was blamed on 'the dynamic dims of
    input 'image''."""
    model = shutil.copy(SAMPLE, sandbox.models / "m.onnx")
    build_task(task)
    watch = sandbox.watch()
    refused(run("make-artifacts", model, "-o", "out/art"), message, watch)


def test_a_crash_in_onnxruntime_keeps_its_likely_cause(sandbox, run, build_task):
    model = shutil.copy(SAMPLE, sandbox.models / "m.onnx")
    build_task("crashers:segfault")
    watch = sandbox.watch()
    result = run("make-artifacts", model, "-o", "out/art")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: onnxruntime crashed (SIGSEGV) while building the gradient graph; onnxfix "
        "stopped and wrote nothing"
    )
    assert result.stderr.endswith(
        "Likely cause: the dynamic dims of input 'image', which ONNX Runtime's training kernels "
        "mis-size; give its real shape with --input-shape image=D0,D1,...\n"
    )
    assert not watch.changes()

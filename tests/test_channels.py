"""``--channels``: the record of a tensor with some channels fixed, what every command says
about it, and the refusals of broken or hostile records. (Training numbers against NumPy:
tests/training/test_channel_parts.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxfix import ArtifactsError, KernelShapeError, ProvenanceError, set_kernel, verify
from onnxfix.channels import ChannelParts, channel_ranges, from_rows_view, rows_view
from onnxfix.provenance import FixedTensor, parse_provenance, read_provenance, tensor_digest
from onnxfix.training.layout import Manifest
from tests.support.factories import resnet_stem, save, simple_cnn
from tests.support.paths import README

GABOR_ROWS = "0-3"


def _fixed(tmp_path: Path, channels: str = "0:4", **kw) -> Path:
    src = save(simple_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "fixed.onnx"
    set_kernel(src, out, layers="conv1", kernel="gabor", channels=channels, **kw)
    return out


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).copy() for t in onnx.load(str(path)).graph.initializer}


def _replace(path: Path, out: Path, name: str, values: np.ndarray) -> Path:
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize(
    ("shape", "op", "group"),
    [
        ((6, 2, 3, 3), "Conv", 2),
        ((4, 3, 2), "ConvTranspose", 1),
        ((4, 3, 2, 2), "ConvTranspose", 2),
    ],
)
def test_rows_view_puts_output_channel_o_in_row_o_and_back(shape, op, group):
    w = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    rows = rows_view(w, op=op, role="weight", group=group)
    if op == "ConvTranspose":  # output channel g*M/g + j reads rows of group g, column j
        cg, mg = shape[0] // group, shape[1]
        for o in range(mg * group):
            g, j = divmod(o, mg)
            assert np.array_equal(rows[o], w[g * cg : (g + 1) * cg, j])
    else:
        assert rows is w
    assert np.array_equal(from_rows_view(rows, shape, op=op, role="weight", group=group), w)


def test_parts_split_and_join_any_channel_set():
    w = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)  # ConvT, 2 groups: 12
    parts = ChannelParts(
        "w", "w.fixed", "w.train", w.shape, (1, 7, 11), "ConvTranspose", "weight", 2
    )
    fixed, trained = parts.split(w)
    assert fixed.shape == (3, 2, 3) and trained.shape == (9, 2, 3)
    assert parts.trained == (0, 2, 3, 4, 5, 6, 8, 9, 10)
    assert np.array_equal(parts.join(fixed, trained), w)
    assert parts.describe() == "fixed channels 1, 7, 11 of w, channels 0, 2-6, 8-10 train"
    assert channel_ranges([5, 0, 1, 2, 9, 10]) == "0-2, 5, 9-10"


@pytest.mark.parametrize("fixed", [(), (2, 1), (0, 0), (-1,), (12,), tuple(range(12))], ids=str)
def test_parts_refuse_channel_sets_that_cannot_be_joined(fixed):
    with pytest.raises(ValueError):
        ChannelParts("w", "a", "b", (4, 6, 3), fixed, "ConvTranspose", "weight", 2)


def test_the_record_proves_the_fixed_channels_alone(tmp_path):
    fixed = _fixed(tmp_path)
    record = read_provenance(onnx.load(str(fixed)))["conv1.weight"]
    w = _weights(fixed)["conv1.weight"]
    assert record.fixed_channels == (0, 1, 2, 3)
    assert record.sha256 == tensor_digest(w[:4])
    assert record.channel_sha256 == tuple(tensor_digest(w[c]) for c in range(4))
    assert record.values().shape == (4, 3, 3, 3)
    assert np.array_equal(record.values(), w[:4])
    # The other channels may change (they train): the record still holds.
    w2 = w.copy()
    w2[4:] += 1
    assert record.digest(w2) == record.sha256
    w2[2, 0, 0, 0] += 1
    assert record.changed_channels(record.fixed_values(w2)) == [2]


def test_a_second_set_kernel_adds_channels_and_a_whole_record_stays_whole(tmp_path):
    first = _fixed(tmp_path, "0:2")
    second = tmp_path / "second.onnx"
    set_kernel(first, second, layers="conv1", kernel="laplacian", channels="5")
    record = read_provenance(onnx.load(str(second)))["conv1.weight"]
    assert record.fixed_channels == (0, 1, 5)
    assert record.kernel == "gabor; laplacian"
    assert record.channels == "0:2,5"
    whole = tmp_path / "whole.onnx"
    set_kernel(save(simple_cnn(), tmp_path / "w.onnx"), whole, layers="conv1", kernel="sobel-x")
    again = tmp_path / "again.onnx"
    set_kernel(whole, again, layers="conv1", kernel="laplacian", channels="5")
    record = read_provenance(onnx.load(str(again)))["conv1.weight"]
    assert record.fixed_channels is None
    assert record.kernel == "sobel-x; laplacian"
    # Every channel named: the whole tensor, no channel list.
    every = tmp_path / "every.onnx"
    set_kernel(first, every, layers="conv1", kernel="laplacian", channels="0:8")
    assert read_provenance(onnx.load(str(every)))["conv1.weight"].fixed_channels is None


def test_a_bias_with_channels_fixes_those_channels_of_the_bias(tmp_path):
    before = _weights(save(simple_cnn(), tmp_path / "m0.onnx"))["conv1.bias"]
    fixed = _fixed(tmp_path, "1,3", bias="zero")
    bias = _weights(fixed)["conv1.bias"]
    assert np.array_equal(bias[[1, 3]], [0, 0])
    keep = [0, 2, 4, 5, 6, 7]
    assert np.array_equal(bias[keep], before[keep])
    record = read_provenance(onnx.load(str(fixed)))["conv1.bias"]
    assert record.fixed_channels == (1, 3)
    np.save(tmp_path / "b.npy", np.ones(8, np.float32))
    with pytest.raises(KernelShapeError) as e:
        _fixed(tmp_path, "1,3", bias=str(tmp_path / "b.npy"))
    assert str(e.value) == (
        f"layer 'conv1' has 2 chosen channels, so its bias must have shape (2,); "
        f"'{tmp_path / 'b.npy'}' holds (8,)"
    )


def test_cli_says_which_channels_are_fixed_and_which_train(tmp_path, run):
    src = save(simple_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "f.onnx"
    r = run(
        "set-kernel", src, "--layer", "conv1", "--kernel", "gabor", "--channels", "0:4", "-o", out
    )
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0].startswith(
        "fixed channels 0-3 of weight 'conv1.weight' of layer 'conv1': gabor -> 8x3x3x3 float32"
    )
    r = run("inspect", out)
    assert r.stdout.splitlines()[-2].endswith("initializer  -            channels 0-3")
    r = run("inspect", out, "--trainable", "--loss", "cross-entropy")
    assert r.stdout.splitlines()[1:4] == [
        "trainable (6): conv1.bias, conv2.weight, conv2.bias, head.weight, head.bias, "
        "conv1.weight.train",
        "fixed kernels, frozen (1): conv1.weight.fixed",
        "  fixed channels 0-3 of conv1.weight, channels 4-7 train",
    ]
    r = run("make-artifacts", out, "--loss", "cross-entropy", "-o", tmp_path / "art")
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    at = lines.index("frozen:    1 tensors, 0.00 MB")
    assert lines[at + 1].startswith("  conv1.weight.fixed (fixed kernel, sha256 ")
    assert lines[at + 2] == "  fixed channels 0-3 of conv1.weight, channels 4-7 train"
    manifest = json.loads((tmp_path / "art" / "onnxfix.json").read_text())
    assert manifest["channel_parts"] == {
        "conv1.weight": {
            "fixed": "conv1.weight.fixed",
            "train": "conv1.weight.train",
            "shape": [8, 3, 3, 3],
            "fixed_channels": [0, 1, 2, 3],
            "op": "Conv",
            "role": "weight",
            "group": 1,
        }
    }
    r = run("verify", tmp_path / "art")
    assert r.stdout == (
        "ok       conv1.weight, channels 0-3 (layer conv1)\nall 1 fixed kernels match their record\n"
    )


def test_verify_reports_each_changed_channel(tmp_path, run):
    fixed = _fixed(tmp_path)
    w = _weights(fixed)["conv1.weight"]
    w[5] += 3.0  # a channel that trains: not a change
    w[1, 0, 0, 0] += 0.25
    w[3, 2, 1, 1] -= 0.5
    changed = _replace(fixed, tmp_path / "changed.onnx", "conv1.weight", w)
    report = verify(changed)
    assert report.checks[0].changed_channels == pytest.approx({1: 0.25, 3: 0.5}, rel=1e-6)
    r = run("verify", changed)
    assert r.exit_code == 1
    assert r.stdout == (
        "CHANGED  conv1.weight, channel 1 (layer conv1): largest absolute difference 0.25\n"
        "CHANGED  conv1.weight, channel 3 (layer conv1): largest absolute difference 0.5\n"
    )
    assert r.stderr == ("Error: 1 of 1 fixed kernels differ from their record: conv1.weight\n")


def test_make_artifacts_refuses_a_model_whose_fixed_channels_were_edited(tmp_path, run):
    fixed = _fixed(tmp_path)
    w = _weights(fixed)["conv1.weight"]
    w[2, 0, 0, 0] += 1
    changed = _replace(fixed, tmp_path / "changed.onnx", "conv1.weight", w)
    r = run("make-artifacts", changed, "-o", tmp_path / "art")
    assert r.exit_code == 1
    assert "fixed kernel 'conv1.weight' no longer matches its record" in r.stderr


def test_freeze_patterns_name_the_tensor_and_freeze_both_parts(tmp_path):
    from onnxfix.commands.inspect import trainability

    t = trainability(_fixed(tmp_path), loss="cross-entropy", freeze="conv1.weight")
    assert "conv1.weight.train" in t.frozen
    assert "conv1.weight.train" not in t.trainable
    t = trainability(_fixed(tmp_path), loss="cross-entropy", freeze="conv1")  # the layer's name
    assert "conv1.weight.train" in t.frozen


def test_a_tensor_named_like_a_part_is_refused_by_name(tmp_path):
    model = simple_cnn()
    model.graph.initializer.append(
        numpy_helper.from_array(np.zeros(1, np.float32), "conv1.weight.train")
    )
    src = save(model, tmp_path / "m.onnx")
    out = tmp_path / "f.onnx"
    set_kernel(src, out, layers="conv1", kernel="gabor", channels="0:4")
    from onnxfix import make_artifacts

    with pytest.raises(ArtifactsError) as e:
        make_artifacts(out, tmp_path / "art")
    assert str(e.value) == (
        "tensor 'conv1.weight' has only some channels fixed and trains as two parts, but the "
        "model already has a tensor named 'conv1.weight.train'; rename that tensor"
    )


def _record(**changes) -> str:
    base = FixedTensor.of(
        np.zeros((8, 3, 3, 3), np.float32),
        layer="conv1",
        op="Conv",
        role="weight",
        kernel="k",
        fixed_channels=(0, 1),
    ).to_json()
    base.update(changes)
    return json.dumps({"conv1.weight": base})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"fixed_channels": [0, 8]},
            "has 'fixed_channels' that are not ascending channel numbers from 0 to 7 (some, not all)",
        ),
        ({"fixed_channels": [1, 0]}, "not ascending channel numbers"),
        ({"fixed_channels": list(range(8))}, "(some, not all)"),
        ({"fixed_channels": [True, 2]}, "not ascending channel numbers"),
        ({"fixed_channels": []}, "not ascending channel numbers"),
        (
            {"channel_sha256": ["a" * 64]},
            "has no 'channel_sha256' of 64 hex digits for each fixed channel",
        ),
        ({"group": 0}, "has group 0, not a whole number from 1"),
        (
            {"shape": [8]},
            "fixes channels of a tensor of shape [8], which is not a Conv weight in 1 groups",
        ),
    ],
    ids=lambda v: str(v)[:30],
)
def test_hostile_channel_records_are_refused(changes, message):
    with pytest.raises(ProvenanceError) as e:
        parse_provenance(_record(**changes), source="m.onnx")
    assert message in str(e.value)


def test_values_that_do_not_fit_the_fixed_channels_are_dropped():
    obj = json.loads(_record())
    obj["conv1.weight"]["fixed_channels"] = [0, 1, 2]  # values hold 2 rows
    obj["conv1.weight"]["channel_sha256"] = obj["conv1.weight"]["channel_sha256"] + ["b" * 64]
    record = parse_provenance(json.dumps(obj), source="m")["conv1.weight"]
    assert record.values() is None


def test_a_manifest_with_parts_that_cannot_join_is_refused(tmp_path):
    from onnxfix import make_artifacts

    make_artifacts(_fixed(tmp_path), tmp_path / "art", self_test=False)
    obj = json.loads((tmp_path / "art" / "onnxfix.json").read_text())
    obj["channel_parts"]["conv1.weight"]["fixed_channels"] = [0, 99]
    with pytest.raises(ArtifactsError) as e:
        Manifest.from_json(obj, source="'onnxfix.json'")
    assert str(e.value).startswith("'onnxfix.json' is malformed (channel parts of 'conv1.weight'")


def _readme_section() -> str:
    text = README.read_text()
    start = text.index("### Fixed and learned filters in one layer (`--channels`)")
    return text[start : text.index("\n### ", start + 1)]


def _blocks(section: str, lang: str = "") -> list[str]:
    parts = section.split("```" + lang + "\n")[1:]
    return [p.split("```")[0] for p in parts]


def test_the_readme_example_prints_what_the_readme_shows(tmp_path, run, monkeypatch):
    """The README's 16-Gabor example, run as written on a ResNet-18-style front (the same
    names and 64x3x7x7 first conv): its Python makes the bank, and each command prints the
    lines the README shows."""
    section = _readme_section()
    monkeypatch.chdir(tmp_path)
    save(resnet_stem(), tmp_path / "resnet18.onnx")
    exec(_blocks(section, "python")[0], {})  # writes gabor16.npy
    shown = [b for b in _blocks(section) if b.startswith("$ onnxfix")]

    def check(block: str, outputs: dict[str, str]) -> None:
        """Each command's shown lines come, in order, in what it prints ("..." skips)."""
        for chunk in block.split("$ ")[1:]:
            command, *lines = chunk.rstrip("\n").split("\n")
            printed = outputs[command].splitlines()
            at = 0
            for line in (x for x in lines if x != "..."):
                at = printed.index(line, at) + 1

    set_cmd, make_cmd = (c.split("\n")[0] for c in shown[0].split("$ ")[1:])
    outputs = {}
    for command in (set_cmd, make_cmd):
        r = run(*command.split()[1:])
        assert r.exit_code == 0, r.output
        outputs[command] = r.output
    check(shown[0], outputs)

    fixed = tmp_path / "fixed.onnx"
    w = _weights(fixed)["conv1.weight"]
    _replace(
        fixed,
        tmp_path / "finetuned.onnx",
        "conv1.weight",
        w + (np.arange(64) >= 16)[:, None, None, None],
    )
    w[3, 1, 2, 2] += 0.25
    _replace(fixed, tmp_path / "tampered.onnx", "conv1.weight", w)
    verify_block = shown[1]
    outputs = {}
    for command in [c.split("\n")[0] for c in verify_block.split("$ ")[1:]]:
        r = run(*command.split()[1:])
        outputs[command] = r.stdout + r.stderr
    check(verify_block, outputs)


def test_export_joins_a_downloaded_trained_part_with_the_fixed_one(tmp_path):
    """The web page downloads conv1.weight.train (the channels that learn); export puts it
    back beside the fixed channels, one tensor as the model had it."""
    from onnxfix import export_model, make_artifacts
    from onnxfix.training.checkpoint import read_checkpoint
    from onnxfix.training.layout import load_manifest

    fixed = _fixed(tmp_path, "1,3")
    art = tmp_path / "art"
    make_artifacts(fixed, art, loss="cross-entropy", self_test=False)
    stored = read_checkpoint(art / "checkpoint")
    arrays = {
        name: np.frombuffer(stored.parameters[name].read(), "<f4").reshape(
            stored.parameters[name].dims
        )
        for name in load_manifest(art).trainable
    }
    assert arrays["conv1.weight.train"].shape == (6, 3, 3, 3)
    arrays["conv1.weight.train"] = arrays["conv1.weight.train"] + np.float32(1)
    np.savez(tmp_path / "trained.npz", **arrays)
    export_model(art, tmp_path / "out.onnx", parameters=tmp_path / "trained.npz")
    before, after = _weights(fixed)["conv1.weight"], _weights(tmp_path / "out.onnx")["conv1.weight"]
    assert np.array_equal(after[[1, 3]], before[[1, 3]])
    others = [0, 2, 4, 5, 6, 7]
    assert np.array_equal(after[others], before[others] + np.float32(1))
    assert verify(tmp_path / "out.onnx").ok

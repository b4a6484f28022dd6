"""make-artifacts --split, train on the prefix's features, export: through the real training API.

The model: conv1 fixed (set-kernel), conv2 frozen (--freeze), conv3 and the classifier train;
with ``skip`` an Add reads conv1's Relu across the cut.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxfix import set_kernel
from onnxfix.cli import FLAGS, cli
from onnxfix.commands.export import export_model
from onnxfix.commands.features import compute_features
from onnxfix.commands.make_artifacts import make_artifacts
from onnxfix.commands.train import train
from onnxfix.commands.verify import verify
from onnxfix.errors import ArtifactsError
from onnxfix.training.layout import load_manifest
from onnxfix.training.ort import training_api
from tests.support.factories import frozen_front_cnn, save

DATA_DIR = Path(__file__).parents[1] / "data"


def _fixed_model(folder, skip):
    src = save(frozen_front_cnn(skip=skip), folder / "m.onnx")
    set_kernel(src, folder / "fixed.onnx", layers=["conv1"], kernel="sobel-x")
    return folder / "fixed.onnx"


def _data(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 12, 12)).astype(np.float32)
    np.savez(path, x=x, labels=rng.integers(0, 3, n).astype(np.int64))
    return path


# The skip-connection variant runs in CI (slow): the chain keeps the fast suite under a minute.
@pytest.fixture(
    scope="module",
    params=[False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["chain", "skip"],
)
def trained(request, tmp_path_factory):
    """Split and unsplit artifacts of the same model, trained on the same data and seed."""
    folder = tmp_path_factory.mktemp("split")
    model = _fixed_model(folder, request.param)
    data, val = _data(folder / "d.npz", 40, 1), _data(folder / "v.npz", 12, 2)
    runs = {}
    for split in (False, True):
        art = folder / f"art{int(split)}"
        made = make_artifacts(
            model,
            art,
            loss="cross-entropy",
            optimizer="sgd",
            freeze=["conv1", "conv2"],
            split=split,
        )
        result = train(art, data, val=val, epochs=3, batch_size=8, lr=0.05, seed=3)
        export_model(art, folder / f"out{int(split)}.onnx")
        runs[split] = (art, made, result)
    return folder, request.param, runs


def _params(checkpoint):
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    return {name: np.array(p.data) for name, p in state.parameters}


def test_split_trains_what_unsplit_trains(trained):
    folder, skip, runs = trained
    art1, made, result = runs[True]
    split = made.manifest.split
    assert split is not None
    assert [c.name for c in split.cut] == (["r1", "r2"] if skip else ["r2"])
    assert [c.shape for c in split.cut] == [("N", 4, 12, 12)] * len(split.cut)
    assert split.prefix_fixed == ("conv1.weight",)
    assert split.prefix_parameters == 4 * 9 + 4 + 4 * 4 * 9 + 4
    assert split.prefix_macs == 144 * (4 * 9) + 144 * 4 * (4 * 9)
    assert made.manifest.frozen == ()
    assert (art1 / "prefix_model.onnx").is_file()
    full, head = _params(runs[False][0] / "checkpoint"), _params(art1 / "checkpoint")
    assert set(head) == {"conv3.weight", "conv3.bias", "head.weight", "head.bias"}
    initial = {t.name: onnx.numpy_helper.to_array(t) for t in frozen_front_cnn().graph.initializer}
    for name, values in head.items():
        np.testing.assert_allclose(values, full[name], rtol=1e-5, atol=1e-6)
        assert float(np.max(np.abs(values - initial[name]))) > 1e-4  # it trained
    for a, b in zip(runs[False][2].epochs, result.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)


def test_split_export_is_the_unsplit_model(trained):
    folder, _, _ = trained
    x = np.random.default_rng(9).normal(size=(5, 1, 12, 12)).astype(np.float32)
    outs = [
        ort.InferenceSession(str(folder / f"out{s}.onnx")).run(None, {"x": x})[0] for s in (0, 1)
    ]
    scale = float(np.max(np.abs(outs[0])))
    assert float(np.max(np.abs(outs[0] - outs[1]))) <= 1e-5 * scale
    graphs = [onnx.load(str(folder / f"out{s}.onnx")).graph for s in (0, 1)]
    assert [n.op_type for n in graphs[0].node] == [n.op_type for n in graphs[1].node]
    assert all(c.ok for c in verify(folder / "out1.onnx").checks)


def test_feature_cache_reused_and_recomputed(trained, tmp_path):
    folder, _, runs = trained
    art = runs[True][0]
    first = runs[True][2].features[0]
    assert not first.reused
    stats = [os.stat(f) for f in first.files]
    again = train(art, folder / "d.npz", epochs=1, batch_size=8, checkpoint_out=tmp_path / "c")
    assert again.features[0].reused and again.features[0].files == first.files
    assert [(s.st_ino, s.st_mtime_ns) for s in stats] == [
        (os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in first.files
    ]
    changed = _data(tmp_path / "d.npz", 40, 5)
    other = train(art, changed, epochs=1, batch_size=8, checkpoint_out=tmp_path / "c")
    assert not other.features[0].reused and other.features[0].files != first.files
    # The features equal the prefix model's outputs, and the features command writes them.
    result = compute_features(art, changed, tmp_path / "f.npz")
    assert result.reused
    with np.load(tmp_path / "f.npz") as saved:
        x = np.load(changed)["x"]
        prefix = ort.InferenceSession(str(art / "prefix_model.onnx"))
        want = prefix.run(None, {"x": x})
        cut = [c.name for c in load_manifest(art).split.cut]
        for name, values in zip(cut, want):
            np.testing.assert_array_equal(saved[name], values)
        np.testing.assert_array_equal(saved["labels"], np.load(changed)["labels"])


def test_older_manifest_loads_without_split():
    assert load_manifest(DATA_DIR / "v0.1.0" / "art").split is None


def test_refused_when_nothing_frozen_next_to_the_inputs(tmp_path):
    model = _fixed_model(tmp_path, False)
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(model, tmp_path / "a", loss="cross-entropy", split=True)
    assert e.value.render(FLAGS) == (
        "--split: no useful prefix: nothing frozen sits next to the model's inputs (node "
        "'conv1' reads the inputs and trainable 'conv1.bias'). Freeze the first layers "
        "(set-kernel, --freeze) or drop --split"
    )
    assert not (tmp_path / "a").exists()


def test_refused_when_the_prefix_has_no_parameters(tmp_path):
    from onnx import TensorProto, helper

    model = frozen_front_cnn()
    graph = model.graph
    # A Relu on the input first, and everything trains: the prefix would be that Relu alone.
    graph.node.insert(0, helper.make_node("Relu", ["x"], ["xr"], name="pre"))
    graph.node[1].input[0] = "xr"
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(ArtifactsError) as e:
        make_artifacts(path, tmp_path / "a", loss="cross-entropy", split=True)
    assert e.value.render(FLAGS) == (
        "--split: no useful prefix: the frozen prefix holds only parameter-free ops (Relu), so "
        "computing it once saves next to nothing. Freeze the first layers (set-kernel, "
        "--freeze) or drop --split"
    )


def test_cli_prints_the_cut_and_inspect_reports_it(tmp_path):
    model = _fixed_model(tmp_path, True)
    runner = CliRunner()
    args = ["--loss", "cross-entropy", "--freeze", "conv2", "--freeze", "conv1"]
    made = runner.invoke(
        cli, ["make-artifacts", str(model), "-o", str(tmp_path / "a"), *args, "--split"]
    )
    assert made.exit_code == 0, made.output
    lines = made.stdout.splitlines()
    i = lines.index(
        "split: prefix_model.onnx computes 2 tensors once; the artifacts train the rest (the head) on them"
    )
    assert lines[i + 1 : i + 4] == [
        "  cut 'r1': float32 [N, 4, 12, 12]",
        "  cut 'r2': float32 [N, 4, 12, 12]",
        "  prefix: 54% of the parameters (188 of 351), 56% of the compute (25920 of 46668 "
        "multiply-adds in Conv/Gemm/MatMul, static shapes)",
    ]
    shown = runner.invoke(cli, ["inspect", str(model), "--trainable", *args, "--split", "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert [c["name"] for c in report["split"]["cut"]] == ["r1", "r2"]
    refused = runner.invoke(cli, ["inspect", str(model), "--trainable", "--split"])
    assert "split: refused: --split: no useful prefix" in refused.stdout


def test_cut_stays_before_a_training_only_rewrite():
    # A trainable ConvTranspose is rewritten for training (zero insertion, padding, Conv); the
    # rewrite's first nodes read only the frozen prefix, but their tensors exist only in the
    # training graph, which the prefix model (cut from the inference model) cannot compute.
    from onnx import TensorProto, helper

    from onnxfix.training.plan import plan_training
    from onnxfix.training.split import find_split

    rng = np.random.default_rng(0)
    shapes = {"conv1.weight": (4, 1, 3, 3), "conv1.bias": (4,), "up.weight": (4, 2, 3, 3)}
    inits = [
        onnx.numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
        for n, s in shapes.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "up.weight"], ["y"], name="up", strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = plan_training(model, loss="mse", freeze=("conv1.*",))
    assert [r.op for r in plan.rewrites] == ["ConvTranspose"]
    split = find_split(plan.training_model, plan.freeze.trainable, ["y"], plan.model)
    assert [c.name for c in split.cut] == ["r1"]
    rewritten = find_split(plan.training_model, plan.freeze.trainable, ["y"])
    assert [c.name for c in rewritten.cut] != ["r1"]  # without the inference model: inside


def test_external_data_model(tmp_path):
    """A model whose weights are in an external data file: the prefix model keeps its own
    beside it in the artifacts, by a relative name, and the split trains as the unsplit does."""
    src = save(frozen_front_cnn(skip=True), tmp_path / "m.onnx", external=True)
    set_kernel(src, tmp_path / "fixed.onnx", layers=["conv1"], kernel="sobel-x")
    data = _data(tmp_path / "d.npz", 16, 1)
    trained = {}
    for split in (False, True):
        art = tmp_path / f"art{int(split)}"
        made = make_artifacts(
            tmp_path / "fixed.onnx",
            art,
            loss="cross-entropy",
            optimizer="sgd",
            freeze=["conv1*", "conv2*"],
            split=split,
            self_test=False,
        )
        train(art, data, epochs=1, batch_size=8, lr=0.05, seed=3)
        trained[split] = _params(art / "checkpoint")
    assert [c.name for c in made.manifest.split.cut] == ["r1", "r2"]
    prefix = onnx.load(str(art / "prefix_model.onnx"), load_external_data=False)
    locations = {
        e.value for t in prefix.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"prefix_model.onnx.data"}
    assert (art / "prefix_model.onnx.data").is_file()
    # The artifacts stand alone: moved elsewhere, the prefix still loads and runs.
    moved = tmp_path / "elsewhere"
    art.rename(moved)
    x = np.load(data)["x"][:2]
    assert ort.InferenceSession(str(moved / "prefix_model.onnx")).run(None, {"x": x})
    for name, values in trained[True].items():
        np.testing.assert_allclose(values, trained[False][name], rtol=1e-5, atol=1e-6)


def test_features_cli(trained, tmp_path):
    folder, _, runs = trained
    art = runs[True][0]
    runner = CliRunner()
    out = tmp_path / "feats.npz"
    result = runner.invoke(
        cli, ["features", str(art), "--data", str(folder / "d.npz"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    cut = [c.name for c in load_manifest(art).split.cut]
    assert result.stdout.splitlines() == [
        *(f"{name!r}: [40, 4, 12, 12]" for name in cut),
        "'labels': [40]",
        f"wrote {out} (from the artifacts' cache)",  # train computed them
    ]
    x = np.load(folder / "d.npz")["x"]
    want = ort.InferenceSession(str(art / "prefix_model.onnx")).run(cut, {"x": x})
    with np.load(out, allow_pickle=False) as saved:
        assert sorted(saved.files) == sorted([*cut, "labels"])
        for name, values in zip(cut, want):
            np.testing.assert_array_equal(saved[name], values)
        np.testing.assert_array_equal(saved["labels"], np.load(folder / "d.npz")["labels"])


def test_features_cli_refusals(trained, tmp_path):
    folder, _, runs = trained
    art, unsplit = runs[True][0], runs[False][0]
    data = folder / "d.npz"
    runner = CliRunner()

    def refused(artifacts, out):
        before = {p: p.read_bytes() for p in [data, *art.rglob("*")] if p.is_file()}
        result = runner.invoke(cli, ["features", str(artifacts), "--data", str(data), "-o", out])
        assert result.exit_code == 1, result.output
        assert {p: p.read_bytes() for p in before} == before
        return result.stderr.strip()

    assert refused(unsplit, str(tmp_path / "f.npz")) == (
        f"Error: {str(unsplit)!r} was made without --split, so it has no prefix to compute; "
        "make the artifacts with 'onnxfix make-artifacts --split'"
    )
    assert not (tmp_path / "f.npz").exists()
    for target, role in [
        (data, "the training data"),
        (art / "prefix_model.onnx", "the artifacts' file"),
        (runs[True][2].features[0].files[0], "the artifacts' cached features"),
    ]:
        assert refused(art, str(target)) == (
            f"Error: -o {str(target)!r} is the same file as {role} {str(target)!r}; onnxfix "
            "never overwrites a file it reads: choose another -o"
        )


@pytest.mark.slow  # trains twice more; CI runs it
def test_split_maps_uncompressed_data(trained, tmp_path, monkeypatch):
    """An uncompressed .npz (numpy.savez) is memory-mapped, not read, and the prefix runs over
    it a batch at a time; a compressed one is read; both give the same features and training."""
    from onnxfix.arrayfiles import open_arrays
    from onnxfix.training import features as features_module

    folder, _, runs = trained
    art = runs[True][0]
    data = folder / "d.npz"
    with np.load(data) as f:
        x, labels = f["x"], f["labels"]
    with open_arrays(data) as archive:
        mapped = archive.map("x")
        assert isinstance(mapped, np.memmap) and mapped.mode == "r"
        assert 0 < mapped.offset and mapped.offset + mapped.nbytes <= data.stat().st_size
        np.testing.assert_array_equal(mapped, x)
    # The same values, as float64 (cast a batch at a time) and compressed (read into memory).
    wide, packed = tmp_path / "wide.npz", tmp_path / "packed.npz"
    np.savez(wide, x=x.astype(np.float64), labels=labels)
    np.savez_compressed(packed, x=x, labels=labels)
    seen = {}
    compute = features_module._compute

    def spy(prefix, manifest, inputs, *rest):
        seen.setdefault("inputs", []).append({n: type(a) for n, a in inputs.items()})
        return compute(prefix, manifest, inputs, *rest)

    monkeypatch.setattr(features_module, "_compute", spy)
    cut = [c.name for c in load_manifest(art).split.cut]
    want = ort.InferenceSession(str(art / "prefix_model.onnx")).run(cut, {"x": x})
    results = {}
    for source in (wide, packed):
        split = features_module.split_arrays(art, load_manifest(art), source)
        assert not split.reused
        for got, values in zip(split.arrays, want):
            np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(split.arrays[-1], labels)
        out = tmp_path / f"c_{source.stem}"
        train(art, source, epochs=2, batch_size=8, lr=0.05, seed=3, checkpoint_out=out)
        results[source] = _params(out)
    assert seen["inputs"][0] == {"x": np.memmap}  # wide.npz: mapped
    assert seen["inputs"][1] == {"x": np.ndarray}  # packed.npz: compressed, read
    train(art, data, epochs=2, batch_size=8, lr=0.05, seed=3, checkpoint_out=tmp_path / "c")
    base = _params(tmp_path / "c")
    for params in results.values():
        assert params.keys() == base.keys()
        for name in base:
            np.testing.assert_allclose(params[name], base[name], rtol=1e-5, atol=1e-6)


def test_split_checks_mapped_data_in_chunks(trained, tmp_path, monkeypatch):
    """The data's checks run block by block over the mapped arrays, with the messages and
    counts a check over the whole array gives."""
    from onnxfix.errors import TrainingDataError
    from onnxfix.training import data as data_module
    from onnxfix.training.features import split_arrays

    folder, _, runs = trained
    art = runs[True][0]
    with np.load(folder / "d.npz") as f:
        x, labels = f["x"].copy(), f["labels"].copy()
    x[17, 0, 3, 4] = np.nan
    x[30, 0, 1, 1] = np.inf
    bad_x = tmp_path / "x.npz"
    np.savez(bad_x, x=x, labels=labels)
    labels[[5, 33]] = 3
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, x=np.nan_to_num(x), labels=labels)
    manifest, unsplit = load_manifest(art), load_manifest(runs[False][0])
    messages = []
    for path in (bad_x, bad_labels):
        with pytest.raises(TrainingDataError) as whole:
            data_module.load_dataset(path, unsplit)  # unsplit: in memory, one block
        monkeypatch.setattr(data_module, "_CHUNK", 100)  # a sample is 144 values: one a block
        with pytest.raises(TrainingDataError) as chunked:
            split_arrays(art, manifest, path)
        monkeypatch.undo()
        assert str(chunked.value) == str(whole.value)
        messages.append(str(whole.value))
    assert "x[17, 0, 3, 4] is nan (2 of 5760 values of 'x' are not finite)" in messages[0]
    assert "labels[5] is 3 (2 of 40 values of 'labels' are outside 0 to 2)" in messages[1]
    assert not any((art / "features").glob(".*.tmp"))


def test_checkpoint_out_never_a_cached_feature_file(trained):
    from onnxfix.errors import ModelFileError

    folder, _, runs = trained
    art, result = runs[True][0], runs[True][2]
    target = result.features[0].files[0]
    before = target.read_bytes()
    with pytest.raises(ModelFileError) as refused:
        train(art, folder / "d.npz", epochs=1, batch_size=8, checkpoint_out=target)
    assert f"is the same file as the artifacts' cached features {str(target)!r}" in str(
        refused.value
    )
    assert target.read_bytes() == before

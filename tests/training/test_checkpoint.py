"""onnxfix's checkpoint writer against ONNX Runtime's own: same file contents, same loaded state."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnxruntime.capi._pybind_state import save_checkpoint as ort_save_checkpoint

from onnxfix import export_model, make_artifacts
from onnxfix.errors import ArtifactsError
from onnxfix.training.checkpoint import read_checkpoint, write_checkpoint
from onnxfix.training.ort import training_api
from onnxfix.training.selftest import open_session, synthetic_batch
from tests.support.factories import save, simple_cnn


@pytest.fixture
def fbs(monkeypatch):
    """ONNX Runtime's generated readers; they import their siblings as ``ort_flatbuffers_py``."""
    import onnxruntime

    root = Path(onnxruntime.__file__).parent / "tools" / "ort_format_model"
    monkeypatch.syspath_prepend(str(root))
    from ort_flatbuffers_py.fbs.Checkpoint import Checkpoint

    return Checkpoint


def contents(Checkpoint, path: Path) -> dict:
    """Everything a checkpoint file says, field by field."""
    c = Checkpoint.GetRootAs(path.read_bytes(), 0)
    ms = c.ModuleState()
    groups = []
    for get, count in (
        (ms.RequiresGradParams, ms.RequiresGradParamsLength()),
        (ms.FrozenParams, ms.FrozenParamsLength()),
    ):
        groups.append(
            [
                (
                    get(i).Name(),
                    get(i).DocString(),
                    get(i).DimsAsNumpy().tolist() if not get(i).DimsIsNone() else None,
                    get(i).DataType(),
                    None if get(i).RawDataIsNone() else get(i).RawDataAsNumpy().tobytes(),
                    get(i).ExternalDataOffset(),
                )
                for i in range(count)
            ]
        )
    bag = c.PropertyBag()
    return {
        "version": c.Version(),
        "nominal": ms.IsNominalState(),
        "external": ms.HasExternalData(),
        "params": groups,
        "strings": None
        if bag is None
        else [(bag.Strings(i).Name(), bag.Strings(i).Value()) for i in range(bag.StringsLength())],
        "optimizer_groups": c.OptimizerGroupsLength(),
    }


def _tensors(tmp_path: Path):
    """Parameters stored every way the builder meets them, and the same ones fully in memory."""
    rng = np.random.default_rng(0)
    full = [
        numpy_helper.from_array(rng.normal(size=(16, 8, 3, 3)).astype(np.float32), "w.external"),
        numpy_helper.from_array(rng.normal(size=(300,)).astype(np.float32), "w.embedded"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b.raw"),
        onnx.helper.make_tensor("b.typed", TensorProto.FLOAT, [3], [0.5, -1.0, 2.0]),
        numpy_helper.from_array(rng.normal(size=(5, 7)), "d.double"),
        numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(2, 3), "i.steps"),
    ]
    stored = [onnx.TensorProto() for _ in full]
    for light, tensor in zip(stored, full):
        light.CopyFrom(tensor)
    # w.external in a data file at an offset; w.embedded as a reference into another file,
    # the way the light build points into the model's own .onnx.
    (tmp_path / "w.data").write_bytes(b"\0" * 100 + full[0].raw_data)
    (tmp_path / "m.onnx").write_bytes(b"x" * 37 + full[1].raw_data + b"y" * 5)
    for light, (location, offset) in ((stored[0], ("w.data", 100)), (stored[1], ("m.onnx", 37))):
        length = len(light.raw_data)
        light.ClearField("raw_data")
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            light.external_data.add(key=key, value=str(value))
        light.data_location = TensorProto.EXTERNAL
    return full, stored


def _ort_checkpoint(full: list[onnx.TensorProto], path: Path, *, nominal: bool = False) -> None:
    """ONNX Runtime's own writer (what onnxblock.save_checkpoint calls): the first four
    tensors trainable, the rest frozen, as the tests give them to onnxfix's writer."""
    ort_save_checkpoint(
        [t.SerializeToString() for t in full[:4]],
        [t.SerializeToString() for t in full[4:]],
        str(path),
        nominal,
    )


@pytest.mark.parametrize("nominal", [False, True], ids=["values", "nominal"])
def test_same_file_contents_as_onnxruntime(fbs, tmp_path, nominal):
    full, stored = _tensors(tmp_path)
    _ort_checkpoint(full, tmp_path / "ort", nominal=nominal)
    write_checkpoint(tmp_path / "ours", stored[:4], stored[4:], base_dir=tmp_path, nominal=nominal)
    ours, theirs = contents(fbs, tmp_path / "ours"), contents(fbs, tmp_path / "ort")
    assert ours == theirs
    assert ours["version"] == 2 and not ours["external"]
    assert not (tmp_path / "ours.data").exists()


def test_loaded_state_and_properties(tmp_path):
    full, stored = _tensors(tmp_path)
    write_checkpoint(
        tmp_path / "ck",
        stored[:4],
        stored[4:],
        base_dir=tmp_path,
        properties={"onnxfix.b": "second", "onnxfix.a": '{"k": 1}'},
    )
    state = training_api().CheckpointState.load_checkpoint(str(tmp_path / "ck"))
    for k, tensor in enumerate(full):
        param = state.parameters[tensor.name]
        assert np.asarray(param.data).tobytes() == numpy_helper.to_array(tensor).tobytes()
        assert param.requires_grad == (k < 4)
    assert state.properties["onnxfix.a"] == '{"k": 1}'
    assert state.properties["onnxfix.b"] == "second"


def test_external_data_layout_as_onnxruntime_writes_it_above_2gb(fbs, tmp_path):
    """ORT 1.19.2, given 2.16 GB, packs payloads in order into CHECKPOINT.data and keeps a
    40-byte one inline; the writer does the same above its limit (forced here at 0)."""
    full, stored = _tensors(tmp_path)
    write_checkpoint(
        tmp_path / "ck", stored[:4], stored[4:], base_dir=tmp_path, single_file_limit=0
    )
    c = contents(fbs, tmp_path / "ck")
    assert c["external"]
    sizes = {t.name: len(numpy_helper.to_array(t).tobytes()) for t in full}
    placed = {
        name.decode(): (raw, offset) for group in c["params"] for name, *_, raw, offset in group
    }
    big = [t.name for t in full if sizes[t.name] >= 1024]
    assert big == ["w.external", "w.embedded"]
    assert placed["w.external"] == (None, 0)
    assert placed["w.embedded"] == (None, sizes["w.external"])
    for name in ("b.raw", "b.typed", "d.double", "i.steps"):
        assert placed[name][1] == -1 and len(placed[name][0]) == sizes[name]
    data = (tmp_path / "ck.data").read_bytes()
    assert data == full[0].raw_data + full[1].raw_data
    state = training_api().CheckpointState.load_checkpoint(str(tmp_path / "ck"))
    for tensor in full:
        got = np.asarray(state.parameters[tensor.name].data)
        assert got.tobytes() == numpy_helper.to_array(tensor).tobytes()


def test_a_training_step_from_an_external_data_checkpoint_matches_one_from_a_single_file(
    tmp_path,
):
    """What matters above 2 GB: ONNX Runtime trains from the split checkpoint exactly as from
    the one-file one. The artifacts' checkpoint is rewritten split; both take an AdamW step."""
    model = save(simple_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "art"
    manifest = make_artifacts(model, out, self_test=False).manifest
    split = tmp_path / "split" / "checkpoint"
    split.parent.mkdir()
    values = {t.name: t for t in onnx.load(str(model)).graph.initializer}
    write_checkpoint(
        split,
        [values[n] for n in manifest.trainable],
        [values[n] for n in manifest.frozen],
        single_file_limit=0,
    )
    assert (tmp_path / "split" / "checkpoint.data").stat().st_size > 0
    after = []
    for checkpoint in (out / "checkpoint", split):
        state, module, optimizer = open_session(out, checkpoint)
        module.train()
        module(*synthetic_batch(manifest))
        optimizer.step()
        after.append({n: np.asarray(state.parameters[n].data).copy() for n in values})
    for name in values:
        assert after[0][name].tobytes() == after[1][name].tobytes(), name
    assert not np.array_equal(
        after[0]["conv2.weight"], numpy_helper.to_array(values["conv2.weight"])
    )


def test_truncated_external_data_is_a_clear_error(tmp_path):
    _, stored = _tensors(tmp_path)
    os.truncate(tmp_path / "w.data", 500)
    with pytest.raises(ArtifactsError) as e:
        write_checkpoint(tmp_path / "ck", stored[:4], stored[4:], base_dir=tmp_path)
    assert str(e.value) == (
        f"'{tmp_path / 'w.data'}' ends before the 4608 bytes at offset 100 a parameter's "
        "external data points to: the data file is truncated"
    )


def test_duplicate_and_mis_sized_parameters_are_refused(tmp_path):
    full, _ = _tensors(tmp_path)
    with pytest.raises(ArtifactsError) as e:
        write_checkpoint(tmp_path / "ck", full[:2], full[1:3])
    assert str(e.value) == "parameters named more than once: w.embedded"
    short = onnx.TensorProto()
    short.CopyFrom(full[2])
    short.raw_data = short.raw_data[:-4]
    with pytest.raises(ArtifactsError) as e:
        write_checkpoint(tmp_path / "ck", [short], [])
    assert str(e.value) == "parameter 'b.raw' holds 12 bytes; its shape [4] and type need 16"
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external"])
def test_make_artifacts_checkpoint_holds_the_models_exact_values(tmp_path, monkeypatch, external):
    """The light build reads each weight from the model's file only while writing it: the
    values must be the model's, bit for bit, wherever the command runs from."""
    folder = tmp_path / "models"
    folder.mkdir()
    model = save(simple_cnn(seed=3), folder / "m.onnx", external=external)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "art"
    make_artifacts(Path("..") / "models" / "m.onnx", out, self_test=False)
    state = training_api().CheckpointState.load_checkpoint(str(out / "checkpoint"))
    for tensor in onnx.load(str(model)).graph.initializer:
        got = np.asarray(state.parameters[tensor.name].data)
        assert got.tobytes() == numpy_helper.to_array(tensor).tobytes(), tensor.name
    assert os.listdir(elsewhere) == []


def test_reader_finds_every_value_in_files_onnxruntime_wrote(tmp_path):
    """export and verify read checkpoints with onnxfix's reader: it must find the same values
    as ONNX Runtime in ORT's own files, including one saved after an AdamW step (optimizer
    state in it too) and a split one."""
    full, stored = _tensors(tmp_path)
    _ort_checkpoint(full, tmp_path / "ort")
    write_checkpoint(
        tmp_path / "split", stored[:4], stored[4:], base_dir=tmp_path, single_file_limit=0
    )
    model = save(simple_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "art"
    manifest = make_artifacts(model, out, self_test=False).manifest
    state, module, optimizer = open_session(out)
    module.train()
    module(*synthetic_batch(manifest))
    optimizer.step()
    api = training_api()
    api.CheckpointState.save_checkpoint(
        state, str(tmp_path / "trained"), include_optimizer_state=True
    )
    for path in (tmp_path / "ort", tmp_path / "split", tmp_path / "trained", out / "checkpoint"):
        loaded = api.CheckpointState.load_checkpoint(str(path))
        read = read_checkpoint(path)
        assert not read.nominal
        assert read.properties == {k: loaded.properties[k] for k in read.properties}
        names = set(read.parameters)
        assert names == set(manifest.trainable + manifest.frozen) or names == {t.name for t in full}
        for name, param in read.parameters.items():
            want = np.asarray(loaded.parameters[name].data)
            assert (
                param.dims == want.shape
                and param.trainable == loaded.parameters[name].requires_grad
            )
            assert param.read() == want.tobytes(), (path.name, name)
    assert read_checkpoint(out / "checkpoint").properties.keys() == {
        "onnxfix.fixed_kernels",
        "onnxfix.manifest",
    }


def test_reader_refuses_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00ONNX" + b"\x00" * 40)
    with pytest.raises(ArtifactsError) as e:
        read_checkpoint(tmp_path / "junk")
    assert str(e.value) == (
        f"'{tmp_path / 'junk'}' is not an ONNX Runtime training checkpoint (no ODTC identifier)"
    )


def test_export_refuses_a_nominal_or_foreign_checkpoint(tmp_path):
    model = save(simple_cnn(), tmp_path / "m.onnx")
    out = tmp_path / "art"
    make_artifacts(model, out, self_test=False, nominal_checkpoint=True)
    with pytest.raises(ArtifactsError) as e:
        export_model(out, tmp_path / "e.onnx", checkpoint=out / "nominal_checkpoint")
    assert str(e.value) == (
        f"checkpoint '{out / 'nominal_checkpoint'}' is nominal (shapes only, no values); export "
        "the checkpoint a training run saved"
    )
    other = tmp_path / "other"
    make_artifacts(save(simple_cnn(classes=4), tmp_path / "o.onnx"), other, self_test=False)
    with pytest.raises(ArtifactsError) as e:
        export_model(out, tmp_path / "e.onnx", checkpoint=other / "checkpoint")
    assert str(e.value) == (
        f"parameter 'head.weight' in checkpoint '{other / 'checkpoint'}' is [4, 8] float32, the "
        "model's is [10, 8] float32; is it from these artifacts?"
    )
    assert not (tmp_path / "e.onnx").exists()

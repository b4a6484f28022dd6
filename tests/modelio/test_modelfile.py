"""onnxfix.modelio (modelfile, save, inplace): the streaming save writes what onnx.load -> modify -> onnx.save writes, and
an in-place save of an external-data model changes only the changed tensors' bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import external_data_helper, numpy_helper

from onnxfix.errors import ModelFileError
from onnxfix.modelio import inplace, modelfile, reader
from onnxfix.modelio.modelfile import load_model, referencing_payloads
from onnxfix.modelio.save import save_model
from tests.support.factories import rich_model, simple_cnn
from tests.support.wire import UNKNOWN, each_field, with_unknown_fields

# Tensors every test changes: a large embedded or external weight, a small inline bias, a
# tensor stored as typed float_data, a float16 weight, and one inside an If branch.
CHANGED = ("conv2.weight", "conv1.bias", "typed_floats", "conv3.weight", "then.w")


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return list(external_data_helper._get_all_tensors(model))


def new_values(path: Path, names=CHANGED) -> dict[str, np.ndarray]:
    """Values of the same shape and dtype as ``names`` in ``path``, each unlike the old ones."""
    tensors = {t.name: t for t in all_tensors(onnx.load(path))}
    out = {}
    for name in names:
        old = numpy_helper.to_array(tensors[name])
        out[name] = (np.arange(old.size) % 7 - 3).astype(old.dtype).reshape(old.shape)
    return out


def reorder(path: Path) -> None:
    """Rewrite the .onnx with the graph field first and every other field after it reversed."""
    fields = each_field(onnx.load(path, load_external_data=False))
    assert list(fields)[-1] != "graph"
    path.write_bytes(b"".join(reversed(fields.values())))


def write(model: onnx.ModelProto, path: Path, layout: str) -> Path:
    """``model`` saved at ``path`` in one of the layouts exporters and tools produce."""
    external = {
        # onnx.save's default threshold: tensors under 1 KiB (shapes, biases) stay inline, as
        # they must for onnx's shape inference and ONNX Runtime to read a Reshape's shape.
        "external": dict(size_threshold=1024),
        "mixed": dict(size_threshold=2048),  # 1-2 KiB tensors stay embedded (and are spliced)
        "per-tensor-files": dict(size_threshold=1024, all_tensors_to_one_file=False),
        "graph-not-last-external": dict(size_threshold=1024),
    }.get(layout)
    if external is None:
        onnx.save(model, path)
    else:
        external.setdefault("all_tensors_to_one_file", True)
        onnx.save(
            model, path, save_as_external_data=True, location=path.name + ".weights", **external
        )
    if layout.startswith("graph-not-last"):
        reorder(path)
    return path


LAYOUTS = [
    "embedded",
    "external",
    "mixed",
    "per-tensor-files",
    "graph-not-last",
    "graph-not-last-external",
]
EXTERNAL_LAYOUTS = [layout for layout in LAYOUTS if layout not in ("embedded", "graph-not-last")]


def simple_path(src: Path, dst: Path, changes: dict[str, np.ndarray]) -> Path:
    """onnx.load -> replace the values, keeping each tensor's other fields -> onnx.save."""
    light = onnx.load(src, load_external_data=False)
    external = any(external_data_helper.uses_external_data(t) for t in all_tensors(light))
    model = onnx.load(src)
    tensors = {t.name: t for t in all_tensors(model)}
    for name, values in changes.items():
        tensor = tensors[name]
        for typed in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(typed)
        tensor.raw_data = values.tobytes()
    onnx.save(model, dst, save_as_external_data=external, location=dst.name + ".data")
    return dst


def streaming(src: Path, dst: Path, changes: dict[str, np.ndarray], **kwargs) -> Path:
    mf = load_model(src)
    tensors = {t.name: t for t in all_tensors(mf.model)}
    for name, values in changes.items():
        mf.write_array(tensors[name], values)
    return save_model(mf, dst, expect=changes, **kwargs)


def contents(path: Path) -> onnx.ModelProto:
    """The model as onnx.load gives it, with where each tensor's bytes were stored left out."""
    model = onnx.load(path)
    for tensor in all_tensors(model):
        tensor.ClearField("data_location")
        del tensor.external_data[:]
    return model


def tensor_bytes(path: Path) -> dict[str, tuple[int, list[int], bytes]]:
    return {
        t.name: (t.data_type, list(t.dims), numpy_helper.to_array(t).tobytes())
        for t in all_tensors(onnx.load(path))
    }


def assert_same_as_simple_path(got: Path, expected: Path, changes: dict[str, np.ndarray]) -> None:
    written = tensor_bytes(got)
    assert written == tensor_bytes(expected)
    for name, values in changes.items():
        assert written[name][2] == values.tobytes()
    assert contents(got).SerializeToString() == contents(expected).SerializeToString()


def locations(path: Path) -> dict[str, tuple[str, int, int]]:
    """Each external tensor's (location, offset, length), as the .onnx at ``path`` records."""
    out = {}
    for tensor in all_tensors(onnx.load(path, load_external_data=False)):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            out[tensor.name] = (info.location, info.offset or 0, info.length)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(params=[False, True], ids=["plain", "unknown-fields"])
def model(request) -> onnx.ModelProto:
    return with_unknown_fields(rich_model()) if request.param else rich_model()


# ----------------------------------------------------------------------- streaming save vs simple


@pytest.mark.parametrize("layout", LAYOUTS)
def test_streaming_save_writes_what_the_simple_path_writes(tmp_path, model, layout):
    src = write(model, tmp_path / "m.onnx", layout)
    changes = new_values(src)
    (tmp_path / "simple").mkdir()
    expected = simple_path(src, tmp_path / "simple" / "m.onnx", changes)
    before = snapshot(tmp_path)
    got = streaming(src, tmp_path / "out.onnx", changes)
    assert_same_as_simple_path(got, expected, changes)
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before  # input intact
    if layout in EXTERNAL_LAYOUTS:  # one data file of its own, whatever the source's were
        assert {loc for loc, _, _ in locations(got).values()} == {"out.onnx.data"}
    if model.graph.initializer[0].SerializeToString().endswith(UNKNOWN):
        written = contents(got)
        for message in (written, written.graph, written.graph.initializer[0]):
            assert UNKNOWN in message.SerializeToString()


@pytest.mark.parametrize("layout", ["embedded", "external", "mixed"])
def test_unchanged_save_keeps_every_tensor(tmp_path, layout):
    src = write(with_unknown_fields(rich_model()), tmp_path / "m.onnx", layout)
    got = save_model(load_model(src), tmp_path / "out.onnx")
    assert contents(got).SerializeToString() == contents(src).SerializeToString()
    if layout == "embedded":
        assert got.read_bytes() == src.read_bytes()


# ----------------------------------------------------------------------- in place, external data


@pytest.mark.parametrize("layout", EXTERNAL_LAYOUTS)
def test_in_place_patches_only_the_changed_tensors_bytes(tmp_path, model, layout):
    src = write(model, tmp_path / "m.onnx", layout)
    os.chmod(src, 0o640)
    changes = new_values(src)
    (tmp_path / "simple").mkdir()
    expected = simple_path(src, tmp_path / "simple" / "m.onnx", changes)
    where = locations(src)
    data_files = {loc for loc, _, _ in where.values()}
    before = {name: (tmp_path / name).read_bytes() for name in data_files}
    inodes = {name: (tmp_path / name).stat().st_ino for name in data_files}
    listing = sorted(p.name for p in tmp_path.iterdir())

    streaming(src, src, changes)

    assert locations(src) == where  # same files, offsets and lengths: nothing moved
    assert stat.S_IMODE(src.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing left behind
    for name in data_files:
        path = tmp_path / name
        assert path.stat().st_ino == inodes[name]
        after, old = path.read_bytes(), before[name]
        assert len(after) == len(old)
        patched = sorted(
            (offset, offset + length, tensor)
            for tensor, (location, offset, length) in where.items()
            if location == name and tensor in changes
        )
        kept_from = 0
        for start, end, tensor in patched:
            assert after[start:end] == changes[tensor].tobytes()
            assert after[kept_from:start] == old[kept_from:start]
            kept_from = end
        assert after[kept_from:] == old[kept_from:]  # every other byte is as it was
    assert_same_as_simple_path(src, expected, changes)


def test_in_place_keeps_a_new_tensor_in_the_onnx_and_the_data_file_in_place(tmp_path):
    src = write(rich_model(), tmp_path / "m.onnx", "external")
    data = tmp_path / "m.onnx.weights"
    before, inode = data.read_bytes(), data.stat().st_ino
    extra = np.linspace(-1, 1, 4096, dtype=np.float32)
    mf = load_model(src)
    mf.model.graph.initializer.append(numpy_helper.from_array(extra, "extra"))
    conv2 = next(t for t in mf.model.graph.initializer if t.name == "conv2.weight")
    weight = np.ones((16, 16, 3, 3), np.float32)
    mf.write_array(conv2, weight)
    save_model(mf, src, expect={"extra": extra, "conv2.weight": weight})
    assert data.stat().st_ino == inode and len(data.read_bytes()) == len(before)
    assert "extra" not in locations(src)
    got = tensor_bytes(src)
    assert got["extra"][2] == extra.tobytes() and got["conv2.weight"][2] == weight.tobytes()


def test_in_place_writes_nothing_when_a_check_fails(tmp_path, monkeypatch):
    src = write(rich_model(), tmp_path / "m.onnx", "external")
    before = snapshot(tmp_path)

    def refuse(path, baseline=None):
        raise ModelFileError("the result fails onnx.checker, so it was not written: test")

    monkeypatch.setattr(inplace, "check_model_file", refuse)
    with pytest.raises(ModelFileError, match="not written"):
        streaming(src, src, new_values(src))
    assert snapshot(tmp_path) == before


def test_in_place_puts_the_old_bytes_back_when_the_read_back_differs(tmp_path, monkeypatch):
    src = write(rich_model(), tmp_path / "m.onnx", "external")
    data = tmp_path / "m.onnx.weights"
    before, inode = snapshot(tmp_path), data.stat().st_ino

    def differs(written, expect):
        raise AssertionError("tensor 'conv2.weight' was not written as intended")

    monkeypatch.setattr(inplace, "read_back", differs)
    with pytest.raises(AssertionError):
        streaming(src, src, new_values(src))
    assert snapshot(tmp_path) == before and data.stat().st_ino == inode


def test_in_place_write_failing_half_way_puts_back_what_was_written(tmp_path, monkeypatch):
    src = write(rich_model(), tmp_path / "m.onnx", "external")
    before = snapshot(tmp_path)
    changes = new_values(src, ("conv2.weight", "then.w"))
    real = os.pwrite

    def full_disk(fd, data, offset):
        if bytes(data) == changes["then.w"].tobytes():
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(ModelFileError) as e:
        streaming(src, src, changes)
    assert str(e.value) == (
        f"cannot write tensor 'then.w' into {str(tmp_path / 'm.onnx.weights')!r} (No space left "
        "on device); the model was left as it was. Make the data file writable, or write a copy "
        "with -o"
    )
    assert snapshot(tmp_path) == before


def test_in_place_refuses_a_truncated_data_file(tmp_path):
    src = write(rich_model(), tmp_path / "m.onnx", "external")
    data = tmp_path / "m.onnx.weights"
    _, offset, length = locations(src)["conv2.weight"]
    changes = new_values(src, ("conv2.weight",))
    with open(data, "r+b") as f:
        f.truncate(offset + length - 1)
    before = snapshot(tmp_path)
    with pytest.raises(ModelFileError) as e:
        streaming(src, src, changes, check=False)
    assert str(e.value) == (
        f"{str(data)!r} ends at byte {offset + length - 1}, inside tensor 'conv2.weight' (bytes "
        f"{offset} to {offset + length}); the data file is truncated, copy it again"
    )
    assert snapshot(tmp_path) == before


def test_in_place_on_an_embedded_model_rewrites_the_onnx(tmp_path):
    src = write(with_unknown_fields(rich_model()), tmp_path / "m.onnx", "embedded")
    changes = new_values(src)
    expected = simple_path(src, tmp_path / "simple.onnx", changes)
    streaming(src, src, changes)
    assert_same_as_simple_path(src, expected, changes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "simple.onnx"]


# ----------------------------------------------------------------------- payloads by reference


@pytest.mark.parametrize("layout", ["embedded", "mixed", "graph-not-last"])
def test_referencing_payloads_is_the_model_with_no_weight_in_memory(tmp_path, monkeypatch, layout):
    src = write(with_unknown_fields(rich_model()), tmp_path / "m.onnx", layout)
    mf = load_model(src)
    before = mf.model.SerializeToString()
    model = referencing_payloads(mf)
    assert mf.model.SerializeToString() == before  # the ModelFile is left as it was
    referenced = {
        t.name for t in model.graph.initializer if external_data_helper.uses_external_data(t)
    }
    assert set(mf.splices) <= referenced and "conv2.weight" in referenced
    assert model.ByteSize() < len(before) + 100 * len(referenced)  # no payload came in
    monkeypatch.chdir(tmp_path)  # a proto's external data resolves against the cwd
    onnx.checker.check_model(model, full_check=True)
    got = {t.name: numpy_helper.to_array(t).tobytes() for t in all_tensors(model)}
    assert got == {t.name: numpy_helper.to_array(t).tobytes() for t in all_tensors(onnx.load(src))}


@pytest.mark.parametrize("layout", ["embedded", "mixed", "graph-not-last"])
def test_dereferencing_payloads_undoes_referencing_so_saving_copies_them(tmp_path, layout):
    """make-artifacts keeps the normalised model this way: the references into the source
    become splices again, and saving writes what the simple path writes."""
    src = write(with_unknown_fields(rich_model()), tmp_path / "m.onnx", layout)
    mf = load_model(src)
    model = referencing_payloads(mf)
    model.graph.initializer[0].doc_string = "changed by a plan"  # a change beside the weights
    back = modelfile.dereferencing_payloads(model, mf)
    assert back.splices == mf.splices and back.path == mf.path
    assert not any(
        external_data_helper.uses_external_data(t) and t.name in mf.splices
        for t in back.model.graph.initializer
    )
    got = save_model(back, tmp_path / "out.onnx")
    expected = onnx.load(src)
    expected.graph.initializer[0].doc_string = "changed by a plan"
    onnx.save(expected, tmp_path / "simple.onnx")
    assert tensor_bytes(got) == tensor_bytes(tmp_path / "simple.onnx")
    assert (
        contents(got).SerializeToString() == contents(tmp_path / "simple.onnx").SerializeToString()
    )


def test_onnxruntime_runs_the_referencing_model_saved_in_the_models_folder(tmp_path):
    src = write(simple_cnn(), tmp_path / "cnn.onnx", "embedded")
    mf = load_model(src)
    assert "conv2.weight" in mf.splices
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    light = tmp_path / "light.onnx"  # ONNX Runtime needs a model path to find external data
    light.write_bytes(referencing_payloads(mf).SerializeToString())
    assert light.stat().st_size < src.stat().st_size - 2000
    session = ort.InferenceSession(str(light), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], want[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_spliced_from_another_file_write_what_the_simple_path_writes(tmp_path, layout):
    """export gives each parameter the bytes at an offset of the checkpoint file
    (ModelFile.write_from), copied kernel-side on save: the result must be what replacing the
    values in memory writes, for every layout, for small and subgraph tensors (read in then)."""
    src = write(with_unknown_fields(rich_model()), tmp_path / "m.onnx", layout)
    changes = new_values(src)
    offsets, blob = {}, bytearray(b"\x07" * 13)  # odd offsets: nothing is aligned for free
    for name, values in changes.items():
        offsets[name] = len(blob)
        blob += values.tobytes() + b"\x09" * 5
    (tmp_path / "values.bin").write_bytes(bytes(blob))
    (tmp_path / "simple").mkdir()
    expected = simple_path(src, tmp_path / "simple" / "m.onnx", changes)
    mf = load_model(src)
    tensors = {t.name: t for t in all_tensors(mf.model)}
    for name in changes:
        mf.write_from(tensors[name], tmp_path / "values.bin", offsets[name])
    spliced = mf.splices.get("conv2.weight") or mf.changed.get("conv2.weight")
    size = changes["conv2.weight"].nbytes
    assert spliced == reader.Splice(offsets["conv2.weight"], size, str(tmp_path / "values.bin"))
    got = save_model(mf, tmp_path / "out.onnx", expect=changes)
    assert_same_as_simple_path(got, expected, changes)

"""set-kernel on tiny models built in code: exact values, nothing else touched, ORT agrees."""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxfix import set_kernel
from onnxfix.errors import ModelFileError
from onnxfix.modelio import writer
from onnxfix.modelio.staging import Staging
from onnxfix.provenance import PROVENANCE_KEY
from tests.support.factories import (
    SOBEL_X,
    node_weight_model,
    reference_conv,
    save,
    shared_weight_model,
    simple_cnn,
    single_conv,
)
from tests.support.files import sha256
from tests.support.runtime import session


def inits(path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def arrays(path) -> dict[str, np.ndarray]:
    return {k: numpy_helper.to_array(v) for k, v in inits(path).items()}


def provenance(path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props[PROVENANCE_KEY])


def run_ort(path, x):
    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_literal_into_every_slice_and_nothing_else_touched(cnn, tmp_path, run):
    before_hash = sha256(cnn)
    before = inits(cnn)
    out = tmp_path / "out.onnx"
    result = run(
        "set-kernel", cnn, "--layer", "conv1", "--kernel", "[[-1,0,1],[-2,0,2],[-1,0,1]]", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert sha256(cnn) == before_hash
    after = inits(out)
    w = numpy_helper.to_array(after["conv1.weight"])
    assert w.dtype == np.float32 and w.shape == (8, 3, 3, 3)
    assert np.array_equal(w, np.broadcast_to(SOBEL_X, (8, 3, 3, 3)).astype(np.float32))
    for name in before:
        if name != "conv1.weight":
            assert after[name].SerializeToString() == before[name].SerializeToString(), name
    src, dst = onnx.load(str(cnn)), onnx.load(str(out))
    assert [n.name for n in dst.graph.node] == [n.name for n in src.graph.node]
    assert [n.SerializeToString() for n in dst.graph.node] == [
        n.SerializeToString() for n in src.graph.node
    ]
    assert dst.ir_version == src.ir_version and dst.opset_import == src.opset_import
    props = {p.key: p.value for p in dst.metadata_props}
    assert props["author"] == "tests"
    record = provenance(out)
    assert list(record) == ["conv1.weight"]
    import hashlib

    assert record["conv1.weight"]["sha256"] == hashlib.sha256(w.tobytes()).hexdigest()
    assert record["conv1.weight"]["kernel"] == "[[-1,0,1],[-2,0,2],[-1,0,1]]"
    assert record["conv1.weight"]["layer"] == "conv1"


def test_ort_output_equals_numpy_reference(tmp_path):
    path = save(single_conv((4, 3, 3, 3)), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    set_kernel(path, out, layers=["conv"], kernel="sobel-y")
    x = np.random.default_rng(1).normal(size=(1, 3, 9, 10)).astype(np.float32)
    a = arrays(out)
    expected = reference_conv(x, a["w"], a["b"], 1, [1, 1, 1, 1])
    np.testing.assert_allclose(run_ort(out, x), expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(a["w"][2, 1], SOBEL_X.T.astype(np.float32))


@pytest.mark.parametrize(
    "shape, kernel_shape, group, op",
    [
        ((4, 3, 3, 3), (3, 3), 1, "Conv"),
        ((4, 3, 3, 3), (4, 3, 3), 1, "Conv"),
        ((4, 3, 3, 3), (4, 3, 3, 3), 1, "Conv"),
        ((6, 1, 3, 3), (6, 3, 3), 6, "Conv"),  # depthwise
        ((6, 2, 3, 3), (6, 3, 3), 3, "Conv"),  # grouped
        ((4, 3, 5), (5,), 1, "Conv"),  # 1-D
        ((4, 3, 5), (4, 5), 1, "Conv"),
        ((2, 3, 3, 3, 3), (3, 3, 3), 1, "Conv"),  # 3-D
        ((2, 3, 3, 3, 3), (2, 3, 3, 3), 1, "Conv"),
        ((4, 3, 3, 3), (3, 3), 1, "ConvTranspose"),
        ((4, 2, 3, 3), (4, 3, 3), 2, "ConvTranspose"),  # weight (I, O/g, k, k): 4 outputs
        ((4, 3, 3, 3), (4, 3, 3, 3), 1, "ConvTranspose"),
    ],
)
def test_broadcasting_rules(tmp_path, shape, kernel_shape, group, op):
    path = save(single_conv(shape, op=op, group=group), tmp_path / "m.onnx")
    kernel = np.arange(np.prod(kernel_shape), dtype=np.float64).reshape(kernel_shape) - 3.5
    np.save(tmp_path / "k.npy", kernel)
    out = tmp_path / "o.onnx"
    set_kernel(path, out, layers=["#0"], kernel=str(tmp_path / "k.npy"))
    w = arrays(out)["w"]
    expected = np.empty(shape)
    if kernel_shape == shape:
        expected = kernel
    elif len(kernel_shape) == len(shape) - 2:
        expected[...] = kernel
    elif op == "Conv":
        expected[...] = kernel[:, None]
    else:  # ConvTranspose: output channel o = g * (O/g) + j lives in w[g*(I/g):(g+1)*(I/g), j]
        cin, cout_g = shape[:2]
        for o in range(kernel_shape[0]):
            g, j = divmod(o, cout_g)
            expected[g * cin // group : (g + 1) * cin // group, j] = kernel[o]
    assert np.array_equal(w, expected.astype(np.float32))


def test_channels_bank_fills_chosen_channels_only(cnn, tmp_path):
    bank = np.stack([SOBEL_X, SOBEL_X.T, -SOBEL_X, np.ones((3, 3))])
    np.save(tmp_path / "bank.npy", bank)
    out = tmp_path / "o.onnx"
    set_kernel(cnn, out, layers=["conv1"], kernel=str(tmp_path / "bank.npy"), channels="2:6")
    before, after = arrays(cnn)["conv1.weight"], arrays(out)["conv1.weight"]
    for o in range(8):
        if 2 <= o < 6:
            assert np.array_equal(
                after[o], np.broadcast_to(bank[o - 2], (3, 3, 3)).astype(np.float32)
            )
        else:
            assert np.array_equal(after[o], before[o])
    assert provenance(out)["conv1.weight"]["channels"] == "2:6"


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_values_cast_to_weight_dtype(tmp_path, dtype):
    path = save(single_conv((2, 1, 3, 3), dtype=dtype), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    set_kernel(path, out, layers=["conv"], kernel="[[0.1,0.2,0.3],[1,2,3],[-1,-2,-3.3]]")
    w = arrays(out)["w"]
    assert w.dtype == dtype
    assert np.array_equal(
        w[0, 0], np.array([[0.1, 0.2, 0.3], [1, 2, 3], [-1, -2, -3.3]]).astype(dtype)
    )


def test_bfloat16_weight(tmp_path):
    import ml_dtypes

    from onnxfix.dtypes import array_to_tensor, tensor_to_array

    model = single_conv((2, 1, 3, 3), bias=False)
    w = numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer[0].CopyFrom(array_to_tensor(w.astype(ml_dtypes.bfloat16), "w"))
    assert model.graph.initializer[0].data_type == onnx.TensorProto.BFLOAT16
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "o.onnx"
    set_kernel(path, out, layers=["conv"], kernel="[[1.3,0,0],[0,0,0],[0,0,-2]]", check=False)
    tensor = inits(out)["w"]
    assert tensor.data_type == onnx.TensorProto.BFLOAT16 and len(tensor.raw_data) == 2 * 18
    got = tensor_to_array(tensor).astype(np.float32)
    assert got[0, 0, 0, 0] == np.float32(1.296875) and got[1, 0, 2, 2] == -2.0


@pytest.mark.parametrize("kind", ["Constant", "ConstantOfShape", "Identity", "Cast"])
def test_weight_held_by_node_is_lifted(tmp_path, kind, run):
    path = save(node_weight_model(kind), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    result = run("set-kernel", path, "--layer", "conv1", "--kernel", "laplacian", "-o", out)
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert "conv1.weight" in {t.name for t in model.graph.initializer}
    assert not any(n.output[0] == "conv1.weight" for n in model.graph.node)
    w = arrays(out)["conv1.weight"]
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    assert np.array_equal(w, np.broadcast_to(lap, (8, 3, 3, 3)))
    assert "lifted" in result.stderr
    x = np.random.default_rng(2).normal(size=(1, 3, 16, 16)).astype(np.float32)
    assert np.isfinite(run_ort(out, x)).all()


def test_shared_weight_refused_untied_or_all_uses(tmp_path, run):
    path = save(shared_weight_model(), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    result = run("set-kernel", path, "--layer", "convB", "--kernel", "box", "-o", out)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: layer 'convB' shares weight 'shared.weight' with 'convA'; changing it would change "
        "them too. Add --untie to give this layer its own copy, or --all-uses to change it everywhere\n"
    )
    assert not out.exists()

    result = run("set-kernel", path, "--layer", "convB", "--kernel", "box", "--untie", "-o", out)
    assert result.exit_code == 0, result.output
    a = arrays(out)
    assert np.array_equal(a["shared.weight"], arrays(path)["shared.weight"])
    (untied,) = set(a) - {"shared.weight"}
    assert np.array_equal(a[untied], np.full((4, 4, 3, 3), 1 / 9, np.float32))
    assert list(provenance(out)) == [untied]

    out2 = tmp_path / "o2.onnx"
    result = run(
        "set-kernel", path, "--layer", "convA", "--kernel", "box", "--all-uses", "-o", out2
    )
    assert result.exit_code == 0, result.output
    assert np.array_equal(arrays(out2)["shared.weight"], np.full((4, 4, 3, 3), 1 / 9, np.float32))


def test_bias_zero_and_file(cnn, tmp_path):
    out = tmp_path / "o.onnx"
    set_kernel(cnn, out, layers=["conv1"], kernel="identity", bias="zero")
    assert np.array_equal(arrays(out)["conv1.bias"], np.zeros(8, np.float32))
    assert provenance(out)["conv1.bias"]["role"] == "bias"
    np.save(tmp_path / "b.npy", np.arange(8.0))
    out2 = tmp_path / "o2.onnx"
    set_kernel(cnn, out2, layers=["conv1"], kernel="identity", bias=str(tmp_path / "b.npy"))
    assert np.array_equal(arrays(out2)["conv1.bias"], np.arange(8, dtype=np.float32))


def test_kernels_npz_keys_are_selectors(cnn, tmp_path):
    np.savez(tmp_path / "bank.npz", conv1=SOBEL_X, **{"#1": SOBEL_X.T})
    out = tmp_path / "o.onnx"
    set_kernel(cnn, out, kernels_file=tmp_path / "bank.npz")
    a = arrays(out)
    assert np.array_equal(a["conv1.weight"][5, 2], SOBEL_X.astype(np.float32))
    assert np.array_equal(a["conv2.weight"][7, 7], SOBEL_X.T.astype(np.float32))
    assert set(provenance(out)) == {"conv1.weight", "conv2.weight"}


def test_second_run_keeps_first_record(cnn, tmp_path):
    mid, out = tmp_path / "mid.onnx", tmp_path / "o.onnx"
    set_kernel(cnn, mid, layers=["conv1"], kernel="sobel-x")
    set_kernel(mid, out, layers=["conv2"], kernel="sobel-y")
    assert set(provenance(out)) == {"conv1.weight", "conv2.weight"}


def test_external_data_output_has_own_data_file(tmp_path):
    path = save(simple_cnn(), tmp_path / "ext.onnx", external=True)
    data_before = sha256(tmp_path / "ext.onnx.weights")
    out = tmp_path / "o.onnx"
    set_kernel(path, out, layers=["conv2"], kernel="gaussian:sigma=1")
    assert sha256(tmp_path / "ext.onnx.weights") == data_before
    model = onnx.load(str(out), load_external_data=False)
    locations = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    assert locations == {"o.onnx.data"}
    a, b = arrays(path), arrays(out)
    assert set(a) == set(b)
    for name in a:
        if name != "conv2.weight":
            assert a[name].tobytes() == b[name].tobytes()


def test_in_place(cnn, run):
    result = run("set-kernel", cnn, "--layer", "conv1", "--kernel", "sharpen", "--in-place")
    assert result.exit_code == 0, result.output
    assert arrays(cnn)["conv1.weight"][0, 0, 1, 1] == 5.0


def test_in_place_external_rewrites_only_the_tensor_bytes(tmp_path):
    """--in-place on an external-data model: same data file (inode), every byte outside the
    changed tensor untouched, the .onnx replaced atomically."""
    path = save(simple_cnn(), tmp_path / "ext.onnx", external=True)
    data = tmp_path / "ext.onnx.weights"
    before, inode = data.read_bytes(), data.stat().st_ino
    model = onnx.load(str(path), load_external_data=False)
    entry = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    info = {e.key: e.value for e in entry.external_data}
    offset, length = int(info.get("offset", 0)), int(info["length"])
    set_kernel(path, path, layers=["conv2"], kernel="laplacian", in_place=True)
    after = data.read_bytes()
    assert data.stat().st_ino == inode and len(after) == len(before)
    assert (
        after[:offset] == before[:offset] and after[offset + length :] == before[offset + length :]
    )
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    assert (
        after[offset : offset + length]
        == np.broadcast_to(lap, (8, 8, 3, 3)).astype(np.float32).tobytes()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.weights"]
    assert set(provenance(path)) == {"conv2.weight"}


# ------------------------------------------------------------- checks while the copy ahead runs


@pytest.fixture
def held_copy(monkeypatch):
    """The copy ahead waits until the returned event is set (or 10 s pass)."""
    release = threading.Event()
    real = Staging._copy

    def held(self, source, dest):
        release.wait(10)
        real(self, source, dest)

    monkeypatch.setattr(Staging, "_copy", held)
    return release


@pytest.mark.parametrize("external", [False, True])
def test_structure_is_checked_while_the_copy_ahead_runs(tmp_path, monkeypatch, held_copy, external):
    path = save(simple_cnn(), tmp_path / "m.onnx", external=external)
    copying, real = [], onnx.checker.check_model

    def check(*args, **kwargs):
        copying.append(not held_copy.is_set())
        held_copy.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", check)
    set_kernel(path, tmp_path / "o.onnx", layers=["conv2"], kernel="sobel-x")
    assert copying == [True]
    weight = arrays(tmp_path / "o.onnx")["conv2.weight"]
    assert weight.tobytes() == np.broadcast_to(SOBEL_X, weight.shape).astype(np.float32).tobytes()


@pytest.mark.parametrize("external", [False, True])
def test_a_check_failing_during_the_copy_ahead_leaves_nothing(
    tmp_path, monkeypatch, held_copy, external
):
    path = save(simple_cnn(), tmp_path / "m.onnx", external=external)
    before = sorted(p.name for p in tmp_path.iterdir())

    def refuse(*args, **kwargs):
        held_copy.set()  # the copy goes on, and is stopped by the failure
        raise onnx.checker.ValidationError("test refusal")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    with pytest.raises(ModelFileError) as e:
        set_kernel(path, tmp_path / "o.onnx", layers=["conv2"], kernel="sobel-x")
    assert str(e.value) == "the result fails onnx.checker, so it was not written: test refusal"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_written_file_that_is_not_the_one_checked_is_refused(tmp_path, monkeypatch):
    path = save(simple_cnn(), tmp_path / "m.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    real = writer.Plan.light_view

    def other(self, model, **kwargs):
        light, splices = real(self, model, **kwargs)
        light.doc_string = "not what is written"
        return light, splices

    monkeypatch.setattr(writer.Plan, "light_view", other)
    with pytest.raises(AssertionError, match="is not the model that was checked"):
        set_kernel(path, tmp_path / "o.onnx", layers=["conv2"], kernel="sobel-x")
    assert sorted(p.name for p in tmp_path.iterdir()) == before

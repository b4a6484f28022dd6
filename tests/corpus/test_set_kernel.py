"""set-kernel and inspect on real exported models (see tests/data/README.md).

For each model the first conv gets a new kernel; then the result must hold exactly that kernel,
keep every other tensor's bytes, and compute what the simple path computes: onnx.load, replace
the weight where it lives (initializer, Constant or ConstantOfShape node), run in onnxruntime.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxfix import inspect_model, set_kernel
from tests.support.corpus import PADDLE_CLS_MODEL, onnx_backend_models, rapidocr_model, torch_models
from tests.support.runtime import session

pytestmark = pytest.mark.slow

BACKEND = onnx_backend_models()
TORCH = torch_models()


def _run(model: onnx.ModelProto | str, feeds: dict) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = [
            d.dim_value if d.dim_value > 0 else (1 if k == 0 else 32)
            for k, d in enumerate(i.type.tensor_type.shape.dim)
        ]
        feeds[i.name] = rng.normal(size=dims).astype(np.float32)
    return feeds


def _simple_path(path, weight_name: str, new: np.ndarray) -> onnx.ModelProto:
    """The reference: load everything, replace the weight where it lives."""
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        if t.name == weight_name:
            t.CopyFrom(numpy_helper.from_array(new, weight_name))
            return model
    for n in model.graph.node:
        if weight_name in n.output:
            n.CopyFrom(
                onnx.helper.make_node(
                    "Constant", [], [weight_name], name=n.name, value=numpy_helper.from_array(new)
                )
            )
            return model
    raise AssertionError(weight_name)


def _initializer_bytes(path) -> dict[str, bytes]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def _check_first_conv(path, tmp_path, feeds=None):
    report = inspect_model(path)
    first = next(c for c in report.convs if not c.quantized)
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=first.spatial).round(3)
    np.save(tmp_path / "k.npy", kernel)
    out = tmp_path / "fixed.onnx"
    result = set_kernel(path, out, layers=[f"#{first.index}"], kernel=str(tmp_path / "k.npy"))
    assert [f.tensor for f in result.fixed] == [first.weight]
    expected = np.broadcast_to(kernel, first.shape).astype(np.float32)
    after = _initializer_bytes(out)
    assert after[first.weight] == expected.tobytes()
    for name, data in _initializer_bytes(path).items():
        if name != first.weight:
            assert after[name] == data, name
    reference = _simple_path(path, first.weight, expected)
    feeds = feeds or _feeds(reference)
    for got, want in zip(_run(str(out), feeds), _run(reference, feeds)):
        np.testing.assert_array_equal(got, want)
    return first, result


@pytest.mark.parametrize(
    "path", BACKEND, ids=lambda p: p.parent.name if p.name == "model.onnx" else p.stem
)
def test_onnx_backend_models(path, tmp_path):
    first, result = _check_first_conv(path, tmp_path)
    if path.stem.startswith("light_"):
        assert first.source.kind == "ConstantOfShape"
        assert result.changes == [
            f"lifted the ConstantOfShape node that made {first.weight!r} into an initializer"
        ]
    else:
        assert first.source.kind == "initializer"


@pytest.mark.parametrize("model", TORCH, ids=lambda m: m.id)
def test_torch_exports(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in model.files():
        shutil.copy(f, src / f.name)
    path = src / model.path.name
    io = np.load(model.io_path)
    feeds = {inspect_model(path).inputs[0].name: io["input"]}
    first, _ = _check_first_conv(path, tmp_path, feeds)
    out = tmp_path / "fixed.onnx"
    if model.exporter == "dynamo":  # external data: the output has its own data file
        locations = {
            e.value
            for t in onnx.load(str(out), load_external_data=False).graph.initializer
            for e in t.external_data
            if e.key == "location"
        }
        assert locations == {"fixed.onnx.data"}
    # Setting the kernel it already had changes nothing: PyTorch's own output comes back.
    original = numpy_helper.to_array(
        next(t for t in onnx.load(str(path)).graph.initializer if t.name == first.weight)
    )
    np.save(tmp_path / "same.npy", original)
    same = tmp_path / "same.onnx"
    set_kernel(path, same, layers=[first.weight], kernel=str(tmp_path / "same.npy"))
    np.testing.assert_allclose(_run(str(same), feeds)[0], io["output"], rtol=1e-4, atol=1e-5)


def test_paddle_cls_constant_weights(tmp_path):
    first, result = _check_first_conv(
        PADDLE_CLS_MODEL,
        tmp_path,
        {"x": np.random.default_rng(0).normal(size=(1, 3, 48, 192)).astype(np.float32)},
    )
    assert first.source.kind == "Constant"
    assert result.changes == [
        "lifted the Constant node that made 'conv1_weights' into an initializer"
    ]


@pytest.mark.parametrize("kind", ["det", "rec"])
def test_paddle_det_rec(kind, tmp_path):
    path = rapidocr_model(kind)
    shape = (1, 3, 64, 64) if kind == "det" else (1, 3, 48, 160)
    feeds = {"x": np.random.default_rng(0).normal(size=shape).astype(np.float32)}
    first, _ = _check_first_conv(path, tmp_path, feeds)
    assert first.source.kind == "Constant"


def test_inspect_json_of_a_real_export(run):
    model = next(m for m in TORCH if m.id == "shared_weight.torchscript")
    result = run("inspect", model.path, "--json")
    import json

    data = json.loads(result.stdout)
    assert set(data) >= {"convs", "inputs", "outputs"}
    convs = data["convs"]
    assert set(convs[0]) >= {
        "index",
        "node",
        "op",
        "weight",
        "shape",
        "group",
        "source",
        "shared_with",
        "fixed",
    }
    shared = [c for c in convs if c["shared_with"]]
    assert len(shared) == 2 and shared[0]["weight"] == shared[1]["weight"]
    assert shared[0]["shared_with"] == [shared[1]["node"]]

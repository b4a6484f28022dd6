"""Every real export in the corpus fine-tunes with a fixed kernel, or is refused with a reason.

For each model: set a box filter on the first conv, make-artifacts with MSE (its self-test runs one
step), then three more steps through the training API. The kernel must stay bit-identical,
something else must train, the loss must be finite, and the inference model the artifacts keep
must compute what the original does. The three light_* models whose weights materialise to
hundreds of MB (AlexNet, VGG19, ZFNet) run in tools/corpus_report.py, not here, for CI's time.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from onnxfix import ArtifactsError, inspect_model, make_artifacts, set_kernel
from onnxfix.provenance import tensor_digest
from onnxfix.training.selftest import open_session, synthetic_batch
from tests.support.corpus import PADDLE_CLS_MODEL, onnx_backend_models, rapidocr_model, torch_models
from tests.support.runtime import session

pytestmark = pytest.mark.slow

LARGE = ("light_bvlc_alexnet", "light_vgg19", "light_zfnet512")
BACKEND = [
    p
    for p in onnx_backend_models()
    if (p.parent.name if p.name == "model.onnx" else p.stem) not in LARGE
]


def fine_tune(path, tmp_path, input_shapes=None):
    first = next(c for c in inspect_model(path).convs if not c.quantized)
    set_kernel(path, tmp_path / "fixed.onnx", layers=[f"#{first.index}"], kernel="box")
    floats = {
        t.name
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    }
    if floats == {first.weight}:  # the fixed kernel is all there is to train: a precise refusal
        with pytest.raises(ArtifactsError) as e:
            make_artifacts(tmp_path / "fixed.onnx", tmp_path / "art", loss="mse")
        assert str(e.value) == (
            f"nothing would train: the loss depends only on fixed or frozen parameters ({first.weight})"
        )
        assert not (tmp_path / "art").exists()
        return None
    result = make_artifacts(
        tmp_path / "fixed.onnx", tmp_path / "art", loss="mse", input_shapes=input_shapes
    )
    m = result.manifest
    state, module, optimizer = open_session(tmp_path / "art")
    before = {n: np.array(state.parameters[n].data) for n in m.trainable}
    batch = synthetic_batch(m, scale=result.selftest.batch_scale)
    module.train()
    losses = []
    for _ in range(3):
        losses.append(float(module(*batch)))
        optimizer.step()
        module.lazy_reset_grad()
    assert np.all(np.isfinite(losses)), losses
    fixed = m.fixed_kernels
    assert set(fixed) == {first.weight} and first.weight in m.frozen
    assert tensor_digest(np.asarray(state.parameters[first.weight].data)) == fixed[first.weight]
    assert any(not np.array_equal(before[n], state.parameters[n].data) for n in m.trainable)
    # The inference model kept in the artifacts computes what the fixed model computes.
    feeds = dict(zip([i.name for i in m.inputs], batch))
    want = session(tmp_path / "fixed.onnx").run(None, feeds)
    got = session(tmp_path / "art" / "inference_model.onnx").run(None, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max())))
    return m


@pytest.mark.parametrize("model", torch_models(), ids=lambda m: m.id)
def test_torch_exports(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in model.files():
        shutil.copy(f, src / f.name)
    m = fine_tune(src / model.path.name, tmp_path)
    if model.name == "mobile_block":
        assert {r.split(" ")[0] for r in m.rewrites} >= {"HardSwish", "HardSigmoid", "PRelu"}


@pytest.mark.parametrize(
    "path", BACKEND, ids=lambda p: p.parent.name if p.name == "model.onnx" else p.stem
)
def test_onnx_backend_models(path, tmp_path):
    m = fine_tune(path, tmp_path)
    if m is not None:
        training = onnx.load(
            str(tmp_path / "art" / "training_model.onnx"), load_external_data=False
        )
        assert training.ir_version == 10
        assert m.changes, "IR 3 models always need a normalisation"


def test_paddle_cls(tmp_path):
    fine_tune(PADDLE_CLS_MODEL, tmp_path, {"x": [1, 3, 48, 192]})


@pytest.mark.parametrize("kind, shape", [("det", [1, 3, 64, 64]), ("rec", [1, 3, 48, 160])])
def test_paddle_det_rec(kind, shape, tmp_path):
    fine_tune(rapidocr_model(kind), tmp_path, {"x": shape})

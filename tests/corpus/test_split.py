"""make-artifacts --split on real exports: the same training as without it, the same export.

For each model: set a box filter on the first conv, freeze every other parameter but those of
the last layers (``--freeze`` on the early layers, by exact name), so the frozen prefix is most
of the model, then build the artifacts with and without ``--split``, train both with SGD on the
same random data and seed, export both, and compare: the trained parameters to float32 rounding
(``--split`` trains the head on the prefix's outputs computed once), the exported models'
outputs within 1e-5 of their largest value, and ``verify`` on the split export.

Not here: light_resnet50. Its weights are constant placeholders (ConstantOfShape), so its
activations reach 4e15 to 2e16 at the cut and its logits are equal to 7 digits; float32
rounding then decides how far the softmax saturates, and it differs between the training
session (whole model) and the inference session (prefix): measured, the unsplit step moves
the classifier by 3e-8 and the split one by 1.6e8 from the same start. The split itself is
exact there (the prefix's outputs equal the inference model's, bit for bit); the comparison
is not meaningful on such weights. light_squeezenet stands for the model zoo instead.
"""

from __future__ import annotations

import fnmatch
import glob
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxfix import inspect_model, make_artifacts, set_kernel
from onnxfix.commands.export import export_model
from onnxfix.commands.inspect import trainability
from onnxfix.commands.train import train
from onnxfix.commands.verify import verify
from onnxfix.training.ort import training_api
from tests.support.corpus import PADDLE_CLS_MODEL, onnx_backend_data_dir, torch_models

pytestmark = pytest.mark.slow


def _params(checkpoint) -> dict[str, np.ndarray]:
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    return {name: np.array(p.data) for name, p in state.parameters}


def _dims(spec, samples: int, input_shapes) -> list[int]:
    given = (input_shapes or {}).get(spec.name)
    dims = [
        given[k] if given else (d if isinstance(d, int) and d > 0 else 2)
        for k, d in enumerate(spec.shape)
    ]
    return [samples, *dims[1:]]


def split_vs_unsplit(path, tmp_path, head, input_shapes=None, samples=6):
    """Train ``path`` (the first conv fixed, all but the ``head`` patterns frozen) with and
    without --split; compare. Returns the split's record."""
    first = next(c for c in inspect_model(path).convs if not c.quantized)
    fixed = tmp_path / "fixed.onnx"
    set_kernel(path, fixed, layers=[f"#{first.index}"], kernel="box")
    plan = trainability(fixed, loss="mse")
    learning = [n for n in plan.trainable if any(fnmatch.fnmatchcase(n, p) for p in head)]
    assert learning, plan.trainable
    freeze = [glob.escape(n) for n in plan.trainable if n not in learning]
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    made = {}
    for split in (False, True):
        art = tmp_path / f"art{int(split)}"
        made[split] = make_artifacts(
            fixed,
            art,
            loss="mse",
            optimizer="sgd",
            freeze=freeze,
            split=split,
            input_shapes=input_shapes,
        ).manifest
        if not data.exists():
            m = made[split]
            arrays = {s.name: rng.normal(size=_dims(s, samples, input_shapes)) for s in m.inputs}
            arrays["target"] = rng.normal(size=_dims(m.target, samples, None))
            np.savez(data, **{k: v.astype(np.float32) for k, v in arrays.items()})
        train(art, data, epochs=2, lr=0.01, seed=1)
        export_model(art, tmp_path / f"out{int(split)}.onnx")
    record = made[True].split
    assert record is not None and record.prefix_fixed == (first.weight,)
    assert set(made[True].trainable) == set(learning) == set(made[False].trainable)
    full, split_trained = (
        _params(tmp_path / "art0" / "checkpoint"),
        _params(tmp_path / "art1" / "checkpoint"),
    )
    assert set(split_trained) == set(learning)
    initial = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(tmp_path / "art0" / "inference_model.onnx")).graph.initializer
    }
    for name, values in split_trained.items():
        scale = float(np.max(np.abs(full[name])))
        np.testing.assert_allclose(values, full[name], rtol=1e-5, atol=1e-6 * scale, err_msg=name)
    assert any(not np.array_equal(v, initial[n]) for n, v in split_trained.items())
    # The exported models compute the same function.
    with np.load(data) as d:
        feeds = {s.name: d[s.name][:1] for s in record.model_inputs}
    outs = [ort.InferenceSession(str(tmp_path / f"out{s}.onnx")).run(None, feeds) for s in (0, 1)]
    for want, got in zip(*outs):
        scale = float(np.max(np.abs(want)))
        assert float(np.max(np.abs(want - got))) <= 1e-5 * scale
    assert all(c.ok for c in verify(tmp_path / "out1.onnx").checks)
    return record


def _copy(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in model.files():
        shutil.copy(f, src / f.name)
    return src / model.path.name


@pytest.mark.parametrize(
    "model",
    torch_models(names=("cnn_bn", "fpn_resize", "convtranspose", "mobile_block")),
    ids=lambda m: m.id,
)
def test_torch_exports(model, tmp_path):
    # The dynamo exports keep their weights in external data (.onnx.data beside the model).
    head = {
        "cnn_bn": ["fc.*"],
        "mobile_block": ["head.*"],
        # lat1 reads conv c1's output beside the upsampled top-down path: a skip across the cut.
        "fpn_resize": ["lat1.*", "smooth.*", "out.*"],
        # The trainable ConvTranspose is rewritten for training (zero insertion and a Conv):
        # the cut stays at the tensor the inference model computes, before the rewrite.
        "convtranspose": ["d2.*"],
    }[model.name]
    record = split_vs_unsplit(_copy(model, tmp_path), tmp_path, head)
    cut = len(record.cut)
    assert cut == (2 if model.name == "fpn_resize" else 1), record.cut
    if model.name != "fpn_resize":
        assert record.prefix_macs > record.total_macs / 2
    if model.exporter == "dynamo":  # the prefix model keeps its weights beside it
        prefix = tmp_path / "art1" / "prefix_model.onnx"
        light = onnx.load(str(prefix), load_external_data=False)
        locations = {
            e.value for t in light.graph.initializer for e in t.external_data if e.key == "location"
        }
        assert locations == {"prefix_model.onnx.data"}


def test_light_squeezenet(tmp_path):
    # fire9's squeeze and expand1x1 frozen, its expand3x3 and conv10 train: the cut is the
    # squeeze output (read by expand3x3) and expand1x1's output (read by the Concat).
    path = onnx_backend_data_dir() / "light" / "light_squeezenet.onnx"
    record = split_vs_unsplit(path, tmp_path, ["fire9/expand3x3*", "conv10*"])
    assert len(record.cut) == 2
    assert record.prefix_macs > record.total_macs / 2


def test_paddle_cls_with_input_shapes(tmp_path):
    # Dynamic batch, height and width: --input-shape gives them; the weights are Constant
    # nodes, lifted into initializers.
    record = split_vs_unsplit(
        PADDLE_CLS_MODEL, tmp_path, ["conv_last*", "fc_0*"], input_shapes={"x": [1, 3, 48, 192]}
    )
    assert [c.shape for c in record.cut] == [(1, 32, 2, 96)]
    assert record.prefix_macs > record.total_macs / 2

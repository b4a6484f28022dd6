"""make-artifacts, train, export and verify through the real onnxruntime training API."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxfix import set_kernel
from onnxfix.cli import FLAGS
from onnxfix.commands.make_artifacts import make_artifacts
from onnxfix.training.jobs import SelfTestSkipped
from onnxfix.training.ort import training_api
from tests.support.factories import SOBEL_X, save, simple_cnn, two_conv_head


@pytest.fixture(scope="module")
def fixed_cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    src = save(simple_cnn(), folder / "cnn.onnx")
    set_kernel(src, folder / "fixed.onnx", layers=["conv1"], kernel="sobel-x")
    return folder / "fixed.onnx"


def params(checkpoint) -> dict[str, tuple[np.ndarray, bool]]:
    state = training_api().CheckpointState.load_checkpoint(str(checkpoint))
    return {name: (np.array(p.data), p.requires_grad) for name, p in state.parameters}


def steps(folder, batches, lr=None):
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    module = api.Module(str(folder / "training_model.onnx"), state, str(folder / "eval_model.onnx"))
    optimizer = api.Optimizer(str(folder / "optimizer_model.onnx"), module)
    if lr is not None:
        optimizer.set_learning_rate(lr)
    module.train()
    losses = []
    for batch in batches:
        out = module(*batch)  # cross-entropy and bce: the loss, then the logits
        losses.append(float(out[0] if isinstance(out, (list, tuple)) else out))
        optimizer.step()
        module.lazy_reset_grad()
    return state, losses


@pytest.mark.parametrize("loss", ["mse", "cross-entropy"])
def test_fixed_kernel_frozen_rest_trains(fixed_cnn, tmp_path, loss):
    out = tmp_path / "art"
    result = make_artifacts(fixed_cnn, out, loss=loss)
    manifest = json.loads((out / "onnxfix.json").read_text())
    assert manifest["frozen"] == ["conv1.weight"]
    assert manifest["trainable"] == [
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "head.weight",
        "head.bias",
    ]
    assert result.selftest.frozen_checked == 1
    before = params(out / "checkpoint")
    assert before["conv1.weight"][1] is False and before["head.weight"][1] is True
    rng = np.random.default_rng(0)
    target = (
        rng.integers(0, 10, (4,)).astype(np.int64)
        if loss == "cross-entropy"
        else rng.normal(size=(4, 10)).astype(np.float32)
    )
    x = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    state, losses = steps(out, [(x[:1], target[:1])] * 5)  # the model's batch is fixed at 1
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = {name: np.array(p.data) for name, p in state.parameters}
    assert after["conv1.weight"].tobytes() == before["conv1.weight"][0].tobytes()
    assert np.array_equal(after["conv1.weight"], np.broadcast_to(SOBEL_X, (8, 3, 3, 3)))
    for name in ("conv2.weight", "head.weight", "head.bias", "conv1.bias"):
        assert not np.array_equal(after[name], before[name][0]), name


def test_checkpoint_carries_provenance(fixed_cnn, tmp_path):
    out = tmp_path / "art"
    make_artifacts(fixed_cnn, out, self_test=False)
    state = training_api().CheckpointState.load_checkpoint(str(out / "checkpoint"))
    record = json.loads(state.properties["onnxfix.fixed_kernels"])
    manifest = json.loads((out / "onnxfix.json").read_text())
    assert set(record) == {"conv1.weight"}
    assert record["conv1.weight"]["sha256"] == manifest["fixed_kernels"]["conv1.weight"]
    assert manifest["onnxruntime_version"] == ort.__version__
    assert manifest["target"] == {"name": "target", "shape": [1, 10], "dtype": "float32"}
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint",
        "eval_model.onnx",
        "inference_model.onnx",
        "onnxfix.json",
        "optimizer_model.onnx",
        "training_model.onnx",
    ]
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        assert onnx.load(str(out / name), load_external_data=False).ir_version == 10


def test_freeze_and_train_patterns(fixed_cnn, tmp_path):
    out = tmp_path / "a"
    make_artifacts(fixed_cnn, out, freeze=["conv2*"], self_test=False)
    m = json.loads((out / "onnxfix.json").read_text())
    assert m["frozen"] == ["conv1.weight", "conv2.weight", "conv2.bias"]
    assert m["trainable"] == ["conv1.bias", "head.weight", "head.bias"]
    out2 = tmp_path / "b"
    make_artifacts(fixed_cnn, out2, train=["head"], self_test=False)  # a layer (node) name
    m = json.loads((out2 / "onnxfix.json").read_text())
    assert m["trainable"] == ["head.weight", "head.bias"]
    assert m["frozen"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]


def test_sgd_matches_numpy(tmp_path):
    """Three SGD steps through ORT equal an independent NumPy backward pass; conv1 stays fixed."""
    src = save(two_conv_head(), tmp_path / "m.onnx")
    fixed = tmp_path / "fixed.onnx"
    set_kernel(src, fixed, layers=["conv1"], kernel="[[0,1,0],[1,-4,1],[0,1,0]]")
    out = tmp_path / "art"
    make_artifacts(fixed, out, optimizer="sgd", loss="mse")
    start = {k: v[0].astype(np.float64) for k, v in params(out / "checkpoint").items()}
    rng = np.random.default_rng(3)
    batches = [
        (
            rng.normal(size=(2, 1, 6, 6)).astype(np.float32),
            rng.normal(size=(2, 4)).astype(np.float32),
        )
        for _ in range(3)
    ]
    lr = 0.05
    state, _ = steps(out, batches, lr=lr)

    p = dict(start)
    w1 = p["conv1.weight"]
    for x, t in batches:
        x = x.astype(np.float64)
        h1 = np.zeros((2, 2, 4, 4))
        for i in range(3):
            for j in range(3):
                h1 += np.einsum("nhw,o->nohw", x[:, 0, i : i + 4, j : j + 4], w1[:, 0, i, j])
        h2 = (
            np.einsum("nchw,oc->nohw", h1, p["conv2.weight"][:, :, 0, 0])
            + p["conv2.bias"][None, :, None, None]
        )
        f = h2.reshape(2, 48)
        y = f @ p["head.weight"].T + p["head.bias"]
        dy = 2 * (y - t) / y.size
        grads = {"head.weight": dy.T @ f, "head.bias": dy.sum(0)}
        dh2 = (dy @ p["head.weight"]).reshape(2, 3, 4, 4)
        grads["conv2.weight"] = np.einsum("nohw,nchw->oc", dh2, h1)[:, :, None, None]
        grads["conv2.bias"] = dh2.sum((0, 2, 3))
        p = {k: v - lr * grads[k] if k in grads else v for k, v in p.items()}
    for name, expected in p.items():
        got = np.array(state.parameters[name].data)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    assert (
        np.array(state.parameters["conv1.weight"].data).tobytes()
        == start["conv1.weight"].astype(np.float32).tobytes()
    )
    assert not np.allclose(p["head.weight"], start["head.weight"])  # the steps did move


def test_softmax_output_trains_on_logits(tmp_path):
    model = simple_cnn()
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["y"], name="softmax"))
    src = save(model, tmp_path / "m.onnx")
    out = tmp_path / "art"
    result = make_artifacts(src, out, loss="cross-entropy")
    m = result.manifest
    assert m.loss_input == "logits"
    assert m.notes == (
        "output 'y' comes from Softmax; cross-entropy is computed on its input 'logits' (the logits), "
        "since the loss applies softmax itself",
    )
    assert [o.name for o in m.outputs] == ["y"]


def test_no_torch_needed(fixed_cnn, tmp_path):
    """make-artifacts with torch made unimportable, as on a device-prep machine without it."""
    import subprocess
    import sys

    block = tmp_path / "block"
    block.mkdir()
    (block / "torch.py").write_text("raise ImportError('torch is blocked for this test')\n")
    code = (
        f"import sys; sys.path.insert(0, {str(block)!r}); import onnxfix.commands.make_artifacts as a;"
        f"a.make_artifacts({str(fixed_cnn)!r}, {str(tmp_path / 'art')!r})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(block)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "art" / "checkpoint").exists()


def test_ort_format_and_nominal_checkpoint(fixed_cnn, tmp_path):
    out = tmp_path / "art"
    make_artifacts(fixed_cnn, out, ort_format=True, nominal_checkpoint=True)
    names = sorted(p.name for p in out.iterdir())
    for stem in ("training_model", "eval_model", "optimizer_model"):
        assert f"{stem}.ort" in names and f"{stem}.onnx" in names
    assert "nominal_checkpoint" in names
    # The .ort files load in the training API as the .onnx ones do.
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(out / "checkpoint"))
    module = api.Module(str(out / "training_model.ort"), state, str(out / "eval_model.ort"))
    api.Optimizer(str(out / "optimizer_model.ort"), module)
    nominal = api.CheckpointState.load_checkpoint(str(out / "nominal_checkpoint"))
    assert json.loads(nominal.properties["onnxfix.fixed_kernels"]).keys() == {"conv1.weight"}


@pytest.mark.parametrize("loss", ["bce", "l1"])
def test_other_losses(fixed_cnn, tmp_path, loss):
    result = make_artifacts(fixed_cnn, tmp_path / "art", loss=loss)
    assert result.manifest.loss == loss
    assert result.manifest.target is not None and result.manifest.target.name == "target"
    assert np.isfinite(result.selftest.loss)


def test_extra_output_kept_beside_the_loss(fixed_cnn, tmp_path):
    out = tmp_path / "art"
    make_artifacts(fixed_cnn, out, extra_outputs=["c2"])
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(out / "checkpoint"))
    module = api.Module(str(out / "training_model.onnx"), state, str(out / "eval_model.onnx"))
    assert module.output_names()[1:] == ["c2"]
    x = np.zeros((1, 3, 16, 16), np.float32)
    loss, c2 = module(x, np.zeros((1, 10), np.float32))
    assert c2.shape == (1, 8, 16, 16) and np.isfinite(loss)


def test_loss_none_for_a_model_that_outputs_its_loss(tmp_path):
    model = simple_cnn()
    graph = model.graph
    graph.node.append(onnx.helper.make_node("Mul", ["y", "y"], ["sq"], name="square"))
    graph.node.append(
        onnx.helper.make_node("ReduceMean", ["sq"], ["loss"], name="mean", keepdims=0)
    )
    graph.output.pop()
    graph.output.append(onnx.helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, []))
    src = save(model, tmp_path / "m.onnx")
    result = make_artifacts(src, tmp_path / "art", loss="none")
    assert result.manifest.target is None
    assert result.selftest.loss > 0


def test_train_checkpoint_out_and_fixed_batch(fixed_cnn, tmp_path):
    from onnxfix import train

    out = tmp_path / "art"
    make_artifacts(fixed_cnn, out, self_test=False)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=rng.normal(size=(5, 3, 16, 16)).astype(np.float32),
        target=rng.normal(size=(5, 10)).astype(np.float32),
    )
    before = (out / "checkpoint").read_bytes()
    result = train(out, tmp_path / "d.npz", epochs=2, checkpoint_out=tmp_path / "ck")
    assert (out / "checkpoint").read_bytes() == before  # saved elsewhere, as asked
    assert (tmp_path / "ck").exists() and result.dropped == 0 and len(result.epochs) == 2
    with pytest.raises(Exception) as e:
        train(out, tmp_path / "d.npz", batch_size=4)
    assert str(e.value) == (
        "the model was exported with a fixed batch size of 1; use batch_size=1 or re-export it "
        "with a dynamic batch axis"
    )
    assert e.value.render(FLAGS) == (
        "the model was exported with a fixed batch size of 1; use --batch-size 1 or re-export it "
        "with a dynamic batch axis"
    )


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_self_test_fits_itself_in_the_available_memory_and_says_how(
    fixed_cnn, tmp_path, monkeypatch, run
):
    """An AdamW step holds the weights, their gradients and two moments; rather than be
    killed by the kernel on a model too big for the machine, the self-test leaves out what
    does not fit and says why."""
    import onnxfix.commands.make_artifacts as artifacts

    monkeypatch.setattr(artifacts, "available_memory", lambda: 1000)
    result = make_artifacts(fixed_cnn, tmp_path / "art")
    m = result.manifest
    need = m.trainable_bytes * 4 + m.frozen_bytes
    assert need == (32 + 2304 + 32 + 320 + 40) * 4 + 864  # conv1.weight (864 B) is frozen
    assert result.selftest == SelfTestSkipped(
        f"a training step of this model holds about {need / 1e9:.1f} GB (weights, "
        "gradients, optimizer state) and 0.0 GB is available; train it where it fits, or add "
        "--no-self-test to skip this check knowingly"
    )
    r = run("make-artifacts", fixed_cnn, "-o", tmp_path / "art2", "--optimizer", "sgd")
    assert r.exit_code == 0
    assert (
        "self-test: skipped: a training step of this model holds about 0.0 GB (weights, "
        "gradients, optimizer state) and 0.0 GB is available;" in r.output
    )
    # Room for the gradients but not AdamW's moments: forward and backward are still checked.
    monkeypatch.setattr(artifacts, "available_memory", lambda: 8000)
    light = (32 + 2304 + 32 + 320 + 40) * 2 + 864
    assert light == 6320 < 8000 < need
    result = make_artifacts(fixed_cnn, tmp_path / "art3")
    assert result.selftest.optimizer_step is False and result.selftest.frozen_checked == 1
    assert result.selftest.note == (
        "a training step of this model holds about 0.0 GB (weights, gradients, optimizer "
        "state) and 0.0 GB is available, so the optimizer step was left out"
    )
    r = run("make-artifacts", fixed_cnn, "-o", tmp_path / "art4")
    assert r.exit_code == 0
    assert "self-test: forward and backward ran, loss " in r.output
    assert "self-test: forward and backward only: a training step of this model" in r.output
    monkeypatch.setattr(artifacts, "available_memory", lambda: 10**12)
    result = make_artifacts(fixed_cnn, tmp_path / "art5")
    assert result.selftest.optimizer_step is True and result.selftest.note is None


@pytest.mark.slow  # kills real processes or runs many builds: CI runs it
def test_self_test_stays_in_its_budget_unless_asked_for_the_full_step(
    fixed_cnn, tmp_path, monkeypatch, run
):
    """By default the self-test holds at most 2.5x the weights (at least SELF_TEST_FLOOR):
    past that, forward and backward run without AdamW's moments; --full-self-test runs the
    optimizer step anyway when the machine has the memory."""
    import onnxfix.commands.make_artifacts as artifacts

    monkeypatch.setattr(artifacts, "available_memory", lambda: 10**12)
    monkeypatch.setattr(artifacts, "SELF_TEST_FLOOR", 0)
    weights = 32 + 2304 + 32 + 320 + 40 + 864
    need = (weights - 864) * 4 + 864
    assert int(2.5 * weights) == 8980 < need == 11776
    result = make_artifacts(fixed_cnn, tmp_path / "art")
    assert result.selftest.optimizer_step is False and result.selftest.frozen_checked == 1
    assert result.selftest.note == (
        "a training step of this model holds about 0.0 GB (weights, gradients, optimizer "
        "state), more than the self-test's default budget of 0.0 GB (2.5x the weights), so the "
        "optimizer step was left out; add --full-self-test to run it"
    )
    result = make_artifacts(fixed_cnn, tmp_path / "art2", full_self_test=True)
    assert result.selftest.optimizer_step is True and result.selftest.note is None
    r = run("make-artifacts", fixed_cnn, "-o", tmp_path / "art3", "--full-self-test")
    assert r.exit_code == 0
    assert "self-test: one step ran, loss " in r.output
    monkeypatch.setattr(artifacts, "available_memory", lambda: 8000)  # the machine still rules
    result = make_artifacts(fixed_cnn, tmp_path / "art4", full_self_test=True)
    assert result.selftest.optimizer_step is False
    assert result.selftest.note.endswith(
        "and 0.0 GB is available, so the optimizer step was left out"
    )
    r = run(
        "make-artifacts", fixed_cnn, "-o", tmp_path / "art5", "--full-self-test", "--no-self-test"
    )
    assert r.exit_code == 1
    assert r.output == (
        "Error: --full-self-test and --no-self-test contradict each other; drop one\n"
    )
    assert not (tmp_path / "art5").exists()


def test_available_memory_reads_this_machine():
    from onnxfix.commands.make_artifacts import available_memory

    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < available_memory() <= total

"""The web tests' cases and runners: artifacts built in a temporary folder, the reference run
through ONNX Runtime's Python training API, and the same training in Node (web/node_train.js)
and in headless Chromium (web/drive_page.js), both running the page's onnxfix-web.js."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxfix
from onnxfix.channels import rows_view
from onnxfix.commands.web import make_site
from onnxfix.training.ort import training_api
from tests.support import factories
from tests.support.paths import DATA, ROOT, SAMPLES

WEB = ROOT / "web"
NODE_MODULES = WEB / "node_modules"
ORT_WEB = NODE_MODULES / "onnxruntime-web"
PAGE_JS = ROOT / "onnxfix" / "web" / "onnxfix-web.js"
REQUIRE = "ONNXFIX_REQUIRE_WEB"
NODE_TIMEOUT = 180  # seconds, for one harness run (the tests' own runs take a few)


def missing(why: str):
    """A web test's tool is missing: a failure where CI requires them, else a skip."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{why} ({REQUIRE}=1 requires the web tools)", pytrace=False)
    pytest.skip(why)


# -- cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseSpec:
    id: str
    model: Callable[[Path], Path]  # writes the source model into a folder, returns its path
    layer: str
    kernel: Callable[[], str | np.ndarray]
    channels: str | None
    loss: str
    optimizer: str
    data: Callable[[Path], Path]  # the training data (.npz), in a folder or the repository's
    epochs: int
    batch: int


def _edge_cnn(folder: Path) -> Path:
    return SAMPLES / "edge_cnn.onnx"


def _edges_data(folder: Path) -> Path:
    return SAMPLES / "edges_train.npz"


def _stem(folder: Path) -> Path:
    return factories.save(factories.resnet_stem(), folder / "stem.onnx")


def _gabor_bank() -> np.ndarray:
    """16 Gabor filters, 7x7, at 16 orientations: the fixed part of conv1's 64 filters."""
    return np.stack(
        [onnxfix.make_named_kernel(f"gabor:theta={i * np.pi / 16:.6f}", (7, 7)) for i in range(16)]
    )


def _stem_data(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    path = folder / "stem_data.npz"
    # 28 samples, batch 8: 3 steps an epoch and the last 4 samples dropped.
    np.savez(
        path,
        x=rng.normal(size=(28, 3, 32, 32)).astype(np.float32),
        labels=rng.integers(0, 10, 28).astype(np.int64),
    )
    return path


def _conv1d(folder: Path) -> Path:
    return DATA / "torch" / "conv1d.torchscript.onnx"


def _conv1d_data(folder: Path) -> Path:
    rng = np.random.default_rng(11)
    path = folder / "conv1d_data.npz"
    np.savez(
        path,
        **{
            "input.1": rng.normal(size=(6, 4, 64)).astype(np.float32),
            "target": rng.normal(size=(6, 5)).astype(np.float32),
        },
    )
    return path


CASES = {
    # (a) a whole kernel fixed, AdamW; 256 samples in batches of 24: 10 steps, 16 dropped.
    "edge-adamw": CaseSpec(
        "edge-adamw", _edge_cnn, "edges", lambda: "sobel-x", None, "cross-entropy", "adamw",
        _edges_data, 2, 24,
    ),
    # (b) the same with SGD.
    "edge-sgd": CaseSpec(
        "edge-sgd", _edge_cnn, "edges", lambda: "sobel-x", None, "cross-entropy", "sgd",
        _edges_data, 2, 32,
    ),
    # (c) rewritten ops (BatchNormalization) and channel parts: 16 of conv1's 64 filters fixed.
    "stem-parts": CaseSpec(
        "stem-parts", _stem, "conv1", _gabor_bank, "0:16", "cross-entropy", "adamw",
        _stem_data, 2, 8,
    ),
    # (d) 1-D convs (rewritten for the web runtime), a fixed batch of 1, mse.
    "conv1d": CaseSpec(
        "conv1d", _conv1d, "c1", lambda: "[1,0,-1,0,1]", None, "mse", "adamw",
        _conv1d_data, 1, 1,
    ),
}  # fmt: skip


@dataclass
class Reference:
    """The Python training API's run: losses, parameters before and after, learning rate."""

    losses: list[float]
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    learning_rate: float


@dataclass
class Case:
    spec: CaseSpec
    root: Path
    fixed_model: Path  # set-kernel's output
    artifacts: Path
    site_dir: Path
    site: dict
    reference: Reference
    runs: dict = field(default_factory=dict)  # runtime -> result, run once per session


def build_case(spec: CaseSpec, root: Path) -> Case:
    root.mkdir(parents=True, exist_ok=True)
    fixed = root / "fixed.onnx"
    onnxfix.set_kernel(
        spec.model(root), fixed, layers=spec.layer, kernel=spec.kernel(), channels=spec.channels
    )
    artifacts = root / "artifacts"
    onnxfix.make_artifacts(fixed, artifacts, loss=spec.loss, optimizer=spec.optimizer)
    site_dir = root / "site"
    make_site(artifacts, site_dir, data=spec.data(root), ort_web=ORT_WEB)
    site = json.loads((site_dir / "site.json").read_text(encoding="utf-8"))
    reference = python_reference(artifacts, site, site_dir / "sample.npz", spec.epochs, spec.batch)
    return Case(spec, root, fixed, artifacts, site_dir, site, reference)


def split_parameters(flat: np.ndarray, site: dict) -> dict[str, np.ndarray]:
    return {
        p["name"]: flat[p["offset"] : p["offset"] + p["size"]].reshape(p["shape"]).copy()
        for p in site["parameters"]
    }


def python_reference(artifacts: Path, site: dict, data: Path, epochs: int, batch: int) -> Reference:
    """The page's loop through ONNX Runtime's Python training API: the batches in file order,
    the last partial one dropped; the optimizer's learning rate left at its default."""
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(artifacts / "checkpoint"))
    module = api.Module(
        str(artifacts / "training_model.onnx"), state, str(artifacts / "eval_model.onnx")
    )
    optimizer = api.Optimizer(str(artifacts / "optimizer_model.onnx"), module)
    total = sum(p["size"] for p in site["parameters"])
    assert module.get_parameters_size(True) == total
    before = split_parameters(module.get_contiguous_parameters(True).numpy().copy(), site)
    with np.load(data) as npz:
        arrays = [npz[name] for name in module.input_names()]
    steps = len(arrays[0]) // batch
    losses = []
    module.train()
    for _ in range(epochs):
        for step in range(steps):
            loss = module(*[a[step * batch : (step + 1) * batch] for a in arrays])
            losses.append(float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss)))
            optimizer.step()
            module.lazy_reset_grad()
    after = split_parameters(module.get_contiguous_parameters(True).numpy().copy(), site)
    return Reference(losses, before, after, float(optimizer.get_learning_rate()))


# -- runners -----------------------------------------------------------------------------------


def _run(command: list[str], what: str, out: Path) -> dict:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=NODE_TIMEOUT, cwd=WEB
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} did not finish in {NODE_TIMEOUT} s: {e.stderr or ''}")
    result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {result.get('error') or ''}"
            f"{result.get('harness_error') or ''}\nstderr: {done.stderr[-4000:]}\n"
            f"page console: {result.get('console')}"
        )
    return result


def run_node(node: str, case: Case) -> dict:
    out = case.root / "node.json"
    command = [
        node, str(WEB / "node_train.js"), str(case.site_dir),
        str(case.spec.epochs), str(case.spec.batch), str(out),
    ]  # fmt: skip
    return _run(command, "web/node_train.js", out)


def run_browser(node: str, chromium: str, case: Case) -> dict:
    out = case.root / "page.json"
    downloads = case.root / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    command = [
        node, str(WEB / "drive_page.js"), "--site", str(case.site_dir), "--chromium", chromium,
        "--epochs", str(case.spec.epochs), "--batch", str(case.spec.batch), "--out", str(out),
        "--screenshot", str(case.root / "page.png"), "--download", str(downloads),
        "--timeout", "120",
    ]  # fmt: skip
    return _run(command, "web/drive_page.js", out)


# -- checks ------------------------------------------------------------------------------------


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise AssertionError(f"{name!r} is not an initializer of the model")


def as_parameters(result: dict, site: dict, key: str = "parameters") -> dict[str, np.ndarray]:
    values = result[key]
    assert values is not None, result.get("parameters_error")
    assert list(values) == [p["name"] for p in site["parameters"]]
    return {
        p["name"]: np.asarray(values[p["name"]], dtype=np.float32).reshape(p["shape"])
        for p in site["parameters"]
    }


def check_training(result: dict, case: Case) -> dict[str, np.ndarray]:
    """The runtime's losses are the Python API's; every parameter moved, as in Python."""
    reference = case.reference
    np.testing.assert_allclose(result["losses"], reference.losses, rtol=1e-5, atol=0)
    steps = len(reference.losses) // case.spec.epochs
    means = [
        np.mean(result["losses"][e * steps : (e + 1) * steps]) for e in range(case.spec.epochs)
    ]
    np.testing.assert_allclose(result["epoch_losses"], means, rtol=1e-6)
    trained = as_parameters(result, case.site)
    for name, values in trained.items():
        assert not np.array_equal(values, reference.before[name]), f"{name!r} did not move"
        np.testing.assert_allclose(
            values, reference.after[name], rtol=1e-3, atol=1e-5, err_msg=f"parameter {name!r}"
        )
    return trained


def fixed_rows(case: Case) -> list[tuple[dict, list[int]]]:
    """The kernels onnxfix fixed: (site.json's entry, its fixed output channels)."""
    out = []
    for entry in case.site["kernels"]:
        if entry["fixed"] is None:
            continue
        shape = entry["shape"]
        outputs = shape[1] * entry["group"] if entry["op"] == "ConvTranspose" else shape[0]
        channels = entry["fixed"]["channels"]
        out.append((entry, list(channels) if channels is not None else list(range(outputs))))
    assert out, "the case fixes no kernel"
    return out


def check_export(run, case: Case, parameters_npz: Path, trained: dict[str, np.ndarray]) -> None:
    """The downloaded parameters export; the fixed kernels are set-kernel's, bit for bit, and
    the trained values are the downloaded ones."""
    with np.load(parameters_npz) as npz:
        saved = {name: npz[name] for name in npz.files}
    assert sorted(saved) == sorted(p["name"] for p in case.site["parameters"])
    for p in case.site["parameters"]:
        values = saved[p["name"]]
        assert values.dtype == np.float32 and list(values.shape) == p["shape"], p["name"]
        assert values.tobytes() == trained[p["name"]].tobytes(), p["name"]
    out = parameters_npz.parent / "finetuned.onnx"
    done = run("export", case.artifacts, "--parameters", parameters_npz, "-o", out)
    assert done.exit_code == 0, (done.stdout, done.stderr)
    done = run("verify", out)
    assert done.exit_code == 0, (done.stdout, done.stderr)
    model = onnx.load(str(out))
    source = onnx.load(str(case.fixed_model))
    for entry, channels in fixed_rows(case):
        view = {"op": entry["op"], "role": "weight", "group": entry["group"]}
        got = rows_view(initializer(model, entry["weight"]), **view)
        want = rows_view(initializer(source, entry["weight"]), **view)
        for c in channels:
            assert got[c].tobytes() == want[c].tobytes(), f"{entry['weight']} channel {c} changed"
        parts = entry["parts"]
        if parts is not None and parts["train"] is not None:
            free = [c for c in range(len(got)) if c not in channels]
            assert got[free].tobytes() == saved[parts["train"]].tobytes()
    names = {t.name for t in model.graph.initializer}
    for p in case.site["parameters"]:
        if p["name"] in names:
            assert initializer(model, p["name"]).tobytes() == saved[p["name"]].tobytes()

"""A model over 2 GB (external data) through inspect, set-kernel, make-artifacts, export, verify.

Protobuf cannot hold such a model, so this is the test that no step materialises it: every
command must stream. About a minute and 12 GB of disk; it runs in every CI run (marked slow: the fast run
``pytest -m "not slow"`` leaves it out).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix.training.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow

BIG = 9  # tensors of 256 MB: 2.4 GB, past protobuf's 2 GiB
ROWS, COLS = 64, 1 << 20
NEEDS_DISK = 16 << 30


def _large_model(folder: Path) -> Path:
    """x[1,4,8,8] -> conv0 (4->4, 3x3) -> Relu -> Flatten -> * (sum of the means of BIG 256 MB
    weights) -> y[1,256]. Weights in one external data file, written without protobuf."""
    rng = np.random.default_rng(0)
    small = {
        "conv0.weight": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
        "conv0.bias": rng.normal(0, 0.1, (4,)).astype(np.float32),
    }
    data_name = "large.onnx.data"
    initializers, offset = [], 0
    with open(folder / data_name, "wb") as data:
        for name, array in small.items():
            initializers.append(numpy_helper.from_array(array, name))
        row = np.empty(COLS, np.float32)
        for k in range(BIG):
            row.fill((k + 1) * 1e-3)
            for _ in range(ROWS):
                data.write(row.tobytes())
            t = TensorProto(name=f"w{k}", data_type=TensorProto.FLOAT, dims=[ROWS, COLS])
            for key, value in (
                ("location", data_name),
                ("offset", offset),
                ("length", ROWS * COLS * 4),
            ):
                t.external_data.add(key=key, value=str(value))
            t.data_location = TensorProto.EXTERNAL
            offset += ROWS * COLS * 4
            initializers.append(t)
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv0.weight", "conv0.bias"], ["c"], name="conv0", pads=[1] * 4
        ),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
    ]
    total = None
    for k in range(BIG):
        nodes.append(
            helper.make_node("ReduceMean", [f"w{k}"], [f"m{k}"], keepdims=0, name=f"mean{k}")
        )
        if total is None:
            total = f"m{k}"
        else:
            nodes.append(helper.make_node("Add", [total, f"m{k}"], [f"s{k}"], name=f"add{k}"))
            total = f"s{k}"
    nodes.append(helper.make_node("Mul", ["f", total], ["y"], name="scale"))
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "large.onnx"
    path.write_bytes(model.SerializeToString())  # small: the weights are external
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    free = shutil.disk_usage(folder).free
    if free < NEEDS_DISK:
        pytest.skip(f"needs {NEEDS_DISK >> 30} GiB free beside {folder}, has {free >> 30} GiB")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_model_over_2gb_goes_through_every_command(folder, run):
    model = _large_model(folder)
    size = os.path.getsize(folder / "large.onnx.data")
    assert size > 2 << 30

    r = run("inspect", model, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert [(c["node"], c["shape"]) for c in report["convs"]] == [("conv0", [4, 4, 3, 3])]
    assert report["parameters"]["bytes"] == size + (144 + 4) * 4

    fixed = folder / "fixed.onnx"
    r = run("set-kernel", model, "--layer", "conv0", "--kernel", "laplacian", "-o", fixed)
    assert r.exit_code == 0, r.output

    art = folder / "art"
    r = run("make-artifacts", fixed, "-o", art, "--no-self-test")
    assert r.exit_code == 0, r.output
    stored = read_checkpoint(art / "checkpoint")
    assert (art / "checkpoint.data").stat().st_size >= BIG * ROWS * COLS * 4
    assert stored.parameters["conv0.weight"].trainable is False
    assert all(stored.parameters[f"w{k}"].trainable for k in range(BIG))
    laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    got = np.frombuffer(stored.parameters["conv0.weight"].read(), np.float32).reshape(4, 4, 3, 3)
    assert np.array_equal(got, np.broadcast_to(laplacian, (4, 4, 3, 3)))
    w8 = stored.parameters["w8"]
    with open(w8.path, "rb") as f:  # the last 256 MB tensor, first and last values
        first = np.frombuffer(os.pread(f.fileno(), 4, w8.offset), np.float32)
        last = np.frombuffer(os.pread(f.fileno(), 4, w8.offset + w8.length - 4), np.float32)
    assert first[0] == last[0] == np.float32(9e-3)

    exported = folder / "exported.onnx"
    r = run("export", art, "-o", exported)
    assert r.exit_code == 0, r.output
    light = onnx.load(str(exported), load_external_data=False)
    assert [t.name for t in light.graph.initializer] == ["conv0.weight", "conv0.bias"] + [
        f"w{k}" for k in range(BIG)
    ]
    r = run("verify", exported)
    assert r.exit_code == 0, r.output
    assert "all 1 fixed kernels match their record" in r.output
    # Untrained, so the exported weights are the model's, byte for byte.
    with (
        open(folder / "fixed.onnx.data", "rb") as a,
        open(folder / "exported.onnx.data", "rb") as b,
    ):
        while True:
            x, y = a.read(64 << 20), b.read(64 << 20)
            assert x == y
            if not x:
                break

"""What ``make-artifacts --split`` saves: 10 epochs of ``onnxfix train`` with and without it.

    python benchmarks/bench_split.py                     # the defaults below, about a minute
    python benchmarks/bench_split.py --samples 2048 --epochs 10 --blocks 6 --width 32

The model, built in code and seeded: a 3x3 stem conv (3 -> WIDTH channels) on 3x32x32 images,
then BLOCKS ResNet-style blocks (3x3 conv, Relu, 3x3 conv, Add with the block's input, Relu),
global average pooling and a 10-way Gemm classifier. Every conv is frozen with ``--freeze
'conv*'``; only the classifier trains (SGD). Both runs use the same data, seed and batch size;
the split run includes computing the features once (its first epoch pays for it).

Each ``onnxfix train`` runs in its own process (the installed CLI, ``python -m onnxfix``);
wall time is measured around it and peak memory is the child's ru_maxrss from os.wait4. The
script also checks that the two runs trained the same classifier (largest difference printed).
Not a timed test: the numbers are for the README's Performance section.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resnet_model(blocks: int, width: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name: str, x: str, cin: int, cout: int, out: str) -> None:
        scale = (2.0 / (cin * 9)) ** 0.5
        w = rng.normal(0, scale, (cout, cin, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"))
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, pads=[1] * 4
            )
        )

    conv("conv_stem", "x", 3, width, "s0")
    nodes.append(helper.make_node("Relu", ["s0"], ["b0"]))
    for b in range(blocks):
        x = f"b{b}"
        conv(f"conv{b}a", x, width, width, f"{x}a")
        nodes.append(helper.make_node("Relu", [f"{x}a"], [f"{x}ar"]))
        conv(f"conv{b}b", f"{x}ar", width, width, f"{x}b")
        nodes.append(helper.make_node("Add", [f"{x}b", x], [f"{x}s"]))
        nodes.append(helper.make_node("Relu", [f"{x}s"], [f"b{b + 1}"]))
    nodes.append(helper.make_node("GlobalAveragePool", [f"b{blocks}"], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    inits.append(
        numpy_helper.from_array(rng.normal(0, 0.1, (10, width)).astype(np.float32), "fc.weight")
    )
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias"))
    nodes.append(helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1))
    graph = helper.make_graph(
        nodes,
        "resnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``python -m onnxfix ARGS`` in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxfix", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"onnxfix {' '.join(args)} failed:\n{out}{err}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "resnet.onnx"
        onnx.save(resnet_model(opts.blocks, opts.width), model)
        rng = np.random.default_rng(1)
        data = folder / "data.npz"
        np.savez(
            data,
            x=rng.normal(size=(opts.samples, 3, 32, 32)).astype(np.float32),
            labels=rng.integers(0, 10, opts.samples).astype(np.int64),
        )
        common = ["--loss", "cross-entropy", "--optimizer", "sgd", "--freeze", "conv*"]
        results = {}
        for split in (False, True):
            art = folder / ("split" if split else "full")
            made = ["make-artifacts", str(model), "-o", str(art), *common]
            run(made + (["--split"] if split else []))
            train = ["train", str(art), "--data", str(data), "--epochs", str(opts.epochs)]
            train += ["--batch-size", str(opts.batch_size), "--lr", "0.01", "--seed", "0"]
            results[split] = run(train)
        from onnxfix.training.ort import training_api

        api = training_api()
        trained = [
            {
                n: np.array(p.data)
                for n, p in api.CheckpointState.load_checkpoint(
                    str(folder / name / "checkpoint")
                ).parameters
            }
            for name in ("full", "split")
        ]
        diff = max(float(np.max(np.abs(trained[0][n] - v))) for n, v in trained[1].items())
    (full_s, full_rss), (split_s, split_rss) = results[False], results[True]
    print(
        f"model: stem + {opts.blocks} residual blocks, width {opts.width}, 3x32x32 input; "
        f"{opts.samples} samples, {opts.epochs} epochs, batch {opts.batch_size}, SGD"
    )
    print(f"train without --split: {full_s:7.2f} s, peak RSS {full_rss / 1e6:7.1f} MB")
    print(f"train with --split:    {split_s:7.2f} s, peak RSS {split_rss / 1e6:7.1f} MB")
    print(f"speed-up: {full_s / split_s:.1f}x; largest parameter difference {diff:.2e}")


if __name__ == "__main__":
    main()

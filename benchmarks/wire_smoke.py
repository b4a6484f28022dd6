"""Smoke benchmark: replace one 3x3 kernel in a large embedded-weights model, against ``cp``.

    python benchmarks/wire_smoke.py [--size-mb 500] [--repeat 3] [--baseline] [--workdir DIR]

Builds a chain of 512-channel 3x3 convs with ``--size-mb`` of float32 weights embedded in the
``.onnx`` file (once; kept in ``--workdir``), then times, with the file in the page cache:

* ``cp`` of the file;
* a fresh Python that runs ``read_light_model``, changes one 3x3 kernel of ``conv0.weight`` and
  runs ``write_model`` (imports and interpreter start-up included: what a user waits for);
* with ``--baseline``, ``onnx.load`` -> the same change -> ``onnx.save``.

Each command runs in its own child process and its peak RSS is that child's ``ru_maxrss``, read
with ``os.wait4``: ``getrusage(RUSAGE_CHILDREN)`` would report the maximum over all children,
including the one that built the model. The result of the first wire run is checked against the
source byte for byte. The issue's target on 1 GB: at most 1.5x ``cp`` and 300 MB.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHANNELS = 512
LAYER_BYTES = CHANNELS * CHANNELS * 9 * 4
KERNEL = [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]  # Sobel


def build(path: str, size_mb: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    layers = max(1, size_mb * 2**20 // LAYER_BYTES)
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        weight = rng.standard_normal((CHANNELS, CHANNELS, 3, 3), dtype=np.float32)
        inits.append(numpy_helper.from_array(weight, f"conv{i}.weight"))
        nodes.append(helper.make_node("Conv", [prev, f"conv{i}.weight"], [f"y{i}"], pads=[1] * 4))
        prev = f"y{i}"
    shape = [1, CHANNELS, 8, 8]
    graph = helper.make_graph(
        nodes,
        "wire_smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def with_kernel(data: bytes) -> bytes:
    import numpy as np

    weight = np.frombuffer(data, np.float32).reshape(CHANNELS, CHANNELS, 3, 3).copy()
    weight[0, 0] = KERNEL
    return weight.tobytes()


def run_wire(src: str, dst: str) -> None:
    start = time.perf_counter()
    from onnxfix.modelio.reader import read_light_model, read_payload
    from onnxfix.modelio.writer import write_model

    imported = time.perf_counter()
    model, splices = read_light_model(src)
    read = time.perf_counter()
    tensor = next(t for t in model.graph.initializer if t.name == "conv0.weight")
    tensor.raw_data = with_kernel(read_payload(src, splices.pop("conv0.weight")))
    changed = time.perf_counter()
    write_model(model, splices, src, dst)
    done = time.perf_counter()
    print(
        f"    wire child: import {imported - start:.3f}s, read_light_model {read - imported:.3f}s, "
        f"kernel change {changed - read:.3f}s, write_model {done - changed:.3f}s",
        file=sys.stderr,
    )


def run_onnx(src: str, dst: str) -> None:
    import onnx

    model = onnx.load(src)
    tensor = next(t for t in model.graph.initializer if t.name == "conv0.weight")
    tensor.raw_data = with_kernel(tensor.raw_data)
    onnx.save(model, dst)


def verify(src: str, dst: str) -> None:
    """The wire output reads as the source with conv0's first kernel replaced, nothing else."""
    import numpy as np

    from onnxfix.modelio.reader import read_light_model, read_payload

    before, old = read_light_model(src)
    after, new = read_light_model(dst)
    assert set(new) == set(old), "different tensors were made light"
    for name in old:
        expected = read_payload(src, old[name])
        if name == "conv0.weight":
            expected = with_kernel(expected)
            got = np.frombuffer(read_payload(dst, new[name]), np.float32)
            assert got.reshape(CHANNELS, CHANNELS, 3, 3)[0, 0].tolist() == KERNEL
        assert read_payload(dst, new[name]) == expected, name
    assert after.SerializeToString() == before.SerializeToString()
    print("    verified: the result equals the source with one kernel replaced", file=sys.stderr)


def spawn(*argv: str) -> tuple[float, float]:
    """Run argv; its wall time in seconds and peak RSS in MiB."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], list(argv), env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv)} failed")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def measure(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"model_{args.size_mb}mb.onnx"
    me = [sys.executable, __file__]
    if not src.exists():
        print(f"building {src} ...", file=sys.stderr)
        spawn(*me, "build", str(src), "--size-mb", str(args.size_mb))
    size = src.stat().st_size
    # Into the page cache, so every run reads from memory. A small buffer: a spawned child's
    # ru_maxrss starts from this process's RSS (posix_spawn shares its memory until exec).
    buffer = bytearray(1 << 20)
    with open(src, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
    commands = {"cp": ["cp", str(src)], "wire": [*me, "wire", str(src)]}
    if args.baseline:
        commands["onnx"] = [*me, "onnx", str(src)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for round_ in range(args.repeat):
        for name, argv in commands.items():
            dst = work / f"out_{name}.onnx"
            dst.unlink(missing_ok=True)
            os.sync()  # earlier outputs' writeback must not land in this run's time
            results[name].append(spawn(*argv, str(dst)))
            if name == "wire" and round_ == 0:
                spawn(*me, "verify", str(src), str(dst))
            dst.unlink()
    cp_wall = statistics.median(w for w, _ in results["cp"])
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model: {size / 2**20:.0f} MiB, {args.repeat} runs each, median wall, max RSS")
    print(f"  (this spawner's own peak RSS, a floor for every child's: {own:.1f} MiB)")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = max(r for _, r in runs)
        print(
            f"  {name:5s} wall {wall:7.3f}s  = {wall / cp_wall:5.2f}x cp   peak RSS {rss:7.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="measure")
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="also time onnx.load/onnx.save")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "onnxfix-bench"))
    args = parser.parse_args()
    if args.mode == "measure":
        measure(args)
    elif args.mode == "build":
        build(args.paths[0], args.size_mb)
    else:
        {"wire": run_wire, "onnx": run_onnx, "verify": verify}[args.mode](*args.paths)


if __name__ == "__main__":
    main()

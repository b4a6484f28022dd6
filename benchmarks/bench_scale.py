"""How onnxfix's cost grows with model size, against cp and the simple ways of doing the same.

    python benchmarks/bench_scale.py                      # 100 MB, fits CI's time
    python benchmarks/bench_scale.py --sizes 100MB,1GB,3GB --repeats 3

For each size it generates a synthetic CNN (a chain of 256-channel 3x3 convs on a 1x256x4x4
input, float32, seeded), with weights embedded in the .onnx (below 2 GB) and in an external data
file, then runs each operation in its own process and measures, from outside, the wall time and
the peak RSS (os.wait4's ru_maxrss for that child alone). Prints a markdown table: median of the
repeats, the ratio to `cp` of the same files in the same run, and peak RSS against model size.
Not a test: the numbers depend on the machine (README, "Performance", has this machine's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHANNELS = 256
CONV_BYTES = CHANNELS * CHANNELS * 9 * 4  # 2.36 MB per conv weight

MAKE_MODEL = (
    textwrap.dedent(
        """
    import sys
    import numpy as np, onnx
    from onnx import TensorProto, helper, numpy_helper
    path, size, external = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    c, n = CHANNELS, max(2, int(sys.argv[2]) // CONV_BYTES)
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(n):
        w = (rng.standard_normal((c, c, 3, 3), dtype=np.float32) * (1.0 / (3 * c) ** 0.5))
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"),
                  numpy_helper.from_array(np.zeros(c, np.float32), f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.split("/")[-1] + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)
    """
    )
    .replace("CHANNELS", str(CHANNELS))
    .replace("CONV_BYTES", str(CONV_BYTES))
)

NAIVE = textwrap.dedent(
    """
    import os, sys, numpy as np, onnx
    from onnx import numpy_helper
    src, dst = sys.argv[1], sys.argv[2]
    model = onnx.load(src)
    t = next(t for t in model.graph.initializer if t.name == "conv0.weight")
    w = numpy_helper.to_array(t).copy(); w[:, :] = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    t.CopyFrom(numpy_helper.from_array(w, t.name))
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(src, load_external_data=False).graph.initializer)
    if os.path.exists(dst + ".data"):
        os.remove(dst + ".data")  # onnx refuses to append to an existing data file
    onnx.save(model, dst, save_as_external_data=external, location=dst.split("/")[-1] + ".data")
    """
)

ONNX_IR = textwrap.dedent(
    """
    import sys, numpy as np, onnx_ir as ir
    src, dst = sys.argv[1], sys.argv[2]
    model = ir.load(src)
    w = model.graph.initializers["conv0.weight"]
    arr = w.const_value.numpy().copy(); arr[:, :] = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    w.const_value = ir.tensor(arr, name=w.name)
    ir.save(model, dst)
    """
)

RAW_ARTIFACTS = textwrap.dedent(
    """
    import os, sys, types, onnx, onnxruntime
    onnxruntime.set_default_logger_severity(3)
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import artifacts
    src, out = sys.argv[1], sys.argv[2]
    model = onnx.load(src)
    params = [t.name for t in model.graph.initializer]
    artifacts.generate_artifacts(model, requires_grad=[p for p in params if p != "conv0.weight"],
        frozen_params=["conv0.weight"], loss=artifacts.LossType.MSELoss,
        optimizer=artifacts.OptimType.AdamW, artifact_directory=out)
    """
)


def operations(model: Path, work: Path, onnxfix: list[str], py: str) -> dict[str, list[str]]:
    """The commands measured for one model, in order (later ones use earlier outputs)."""
    return {
        "cp": ["cp", *map(str, files_of(model)), str(work / "copy")],
        "onnxfix inspect": [*onnxfix, "inspect", str(model)],
        "onnxfix set-kernel": [
            *onnxfix,
            "set-kernel",
            str(model),
            "--layer",
            "#0",
            "--kernel",
            "sobel-x",
            "-o",
            str(work / "fixed.onnx"),
        ],
        "onnx load-modify-save": [py, "-c", NAIVE, str(model), str(work / "naive.onnx")],
        "onnx_ir load-modify-save": [py, "-c", ONNX_IR, str(model), str(work / "ir.onnx")],
        "raw generate_artifacts": [
            py,
            "-c",
            RAW_ARTIFACTS,
            str(work / "fixed.onnx"),
            str(work / "raw"),
        ],
        "onnxfix make-artifacts": [
            *onnxfix,
            "make-artifacts",
            str(work / "fixed.onnx"),
            "-o",
            str(work / "art"),
            "--force",
            "--no-self-test",
        ],
        "onnxfix export": [
            *onnxfix,
            "export",
            str(work / "art"),
            "-o",
            str(work / "exported.onnx"),
        ],
    }


def parse_size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def measure(cmd: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, run as its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def files_of(model: Path) -> list[Path]:
    data = model.with_name(model.name + ".data")
    return [model, data] if data.exists() else [model]


def clean(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--skip", default="", help="comma-separated operations to leave out")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    py = sys.executable
    onnxfix = [py, "-m", "onnxfix"]
    try:
        import onnx_ir  # noqa: F401

        have_ir = True
    except ImportError:
        have_ir = False
        print("note: onnx_ir is not installed; its row is left out", file=sys.stderr)
    rows = [
        "| size | layout | operation | wall s | x cp | peak RSS MB | RSS / size |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            for layout in ("embedded", "external"):
                if layout == "embedded" and size >= (2 << 30) - (64 << 20):
                    continue  # protobuf cannot hold it
                model = work / f"m_{size_text}_{layout}.onnx"
                subprocess.run(
                    [
                        py,
                        "-c",
                        MAKE_MODEL,
                        str(model),
                        str(size),
                        "1" if layout == "external" else "0",
                    ],
                    check=True,
                )
                real = sum(p.stat().st_size for p in files_of(model))
                ops = operations(model, work, onnxfix, py)
                cp_wall = None
                for name, cmd in ops.items():
                    if name in skip or (name.startswith("onnx_ir") and not have_ir):
                        continue
                    if name == "cp":
                        (work / "copy").mkdir(exist_ok=True)
                    if name == "raw generate_artifacts":
                        (work / "raw").mkdir(exist_ok=True)
                    results = [measure(cmd, work) for _ in range(args.repeats)]
                    wall = statistics.median(r[0] for r in results)
                    rss = max(r[1] for r in results)
                    if name == "cp":
                        cp_wall = wall
                        clean([work / "copy"])
                    ratio = f"{wall / cp_wall:.2f}" if cp_wall else "-"
                    row = f"| {size_text} | {layout} | {name} | {wall:.2f} | {ratio} | {rss / 1e6:.0f} | {rss / real:.2f} |"
                    print(row, flush=True)
                    rows.append(row)
                    for leftover in ("naive.onnx", "naive.onnx.data", "ir.onnx", "ir.onnx.data"):
                        (work / leftover).unlink(missing_ok=True)
                clean(
                    [
                        *files_of(model),
                        work / "fixed.onnx",
                        work / "fixed.onnx.data",
                        work / "art",
                        work / "raw",
                        work / "exported.onnx",
                        work / "exported.onnx.data",
                    ]
                )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How onnxfix's cost grows with model size, against cp and the simple ways of doing the same.

    python benchmarks/bench_scale.py                        # 100 MB: a few minutes, CI-sized
    python benchmarks/bench_scale.py --sizes 100MB,1GB,3GB --repeats 3
    python benchmarks/bench_scale.py --sizes 3GB --layouts external --ops cp,set-kernel,inspect
    python benchmarks/bench_scale.py --ir-python /path/to/venv-with-onnx_ir/bin/python
    python benchmarks/bench_scale.py --onnxfix-python /path/to/venv/bin/python  # as installed

For each size it generates a synthetic CNN, seeded: a 3x3 stem conv (16 -> 256 channels) on a
1x16x8x8 float32 input, then blocks of a 3x3 conv (256 -> 256, 2.4 MB), a 1x1 conv (256 -> 1024,
1 MB) and a 1x1 conv (1024 -> 256, 1 MB), each followed by a Relu, as many blocks as reach the
size, then global pooling and a 10-way Gemm head. Two layouts: every weight embedded in the
.onnx (only below protobuf's 2 GiB) and every tensor of 1 KiB or more in one external data file,
packed as onnx.save packs it. Sizes are decimal (1GB = 10^9 bytes).

Each operation runs in its own process, warm page cache, outputs removed between repeats:
cp of the model file(s); onnxfix set-kernel (-o, and --in-place on a copy of the external
layout); onnx load -> replace conv0.weight -> save; the same with onnx_ir (when importable here
or by --ir-python; skipped with a note otherwise); onnxfix inspect; raw generate_artifacts
(torch-free import, conv0.weight frozen, the rest trainable, MSE, AdamW; given the ModelProto,
or the path above 2 GiB as ORT requires); onnxfix make-artifacts with its default self-test,
with --full-self-test (a whole AdamW step) and without a self-test; onnxfix export.

``x cp`` is an operation's median wall time over cp's, both measured after ``sync`` with the
previous run's outputs just removed. Check the cp row's repeats in the JSON before trusting a
ratio: on the VM this was written on, a cp of the same 1 GB file took 0.4 s in most runs and
1.5-2.2 s in stretches of minutes, when writing into fresh memory was slow for everything.

Peak memory is measured from outside, twice: ``peak RSS`` is the child's ru_maxrss from
os.wait4, which Linux gives as the largest RSS of that process or any descendant it waited for
(make-artifacts does its work in a grandchild), and ``tree RSS`` is the sum of VmRSS over the
process tree, sampled every 20 ms (it can miss a short peak, and it counts shared pages once
per process). ``RSS/size`` uses the larger of the two.

onnxfix runs as ``python -m onnxfix`` with this interpreter, or with ``--onnxfix-python``: a
development checkout (an editable install, and no bytecode when PYTHONDONTWRITEBYTECODE is set)
starts slower than what users get, so measure a venv holding a plain ``pip install .`` too.

Not a test: the numbers depend on the machine (docs/performance.md has this machine's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

OPS = (
    "cp",
    "inspect",
    "set-kernel",
    "set-kernel-in-place",
    "onnx",
    "onnx_ir",
    "raw-generate-artifacts",
    "make-artifacts-no-self-test",
    "make-artifacts",
    "make-artifacts-full-self-test",
    "export",
)
LABELS = {
    "cp": "cp",
    "inspect": "onnxfix inspect",
    "set-kernel": "onnxfix set-kernel -o",
    "set-kernel-in-place": "onnxfix set-kernel --in-place",
    "onnx": "onnx load-modify-save",
    "onnx_ir": "onnx_ir load-modify-save",
    "raw-generate-artifacts": "raw generate_artifacts",
    "make-artifacts-no-self-test": "onnxfix make-artifacts --no-self-test",
    "make-artifacts": "onnxfix make-artifacts",
    "make-artifacts-full-self-test": "onnxfix make-artifacts --full-self-test",
    "export": "onnxfix export",
}
EMBEDDED_LIMIT = (1 << 31) - (64 << 20)  # protobuf refuses messages of 2 GiB
EXTERNAL_THRESHOLD = 1024  # onnx.save's default size_threshold
STEM, WIDTH, WIDE, CLASSES = 16, 256, 1024, 10
SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]


# --------------------------------------------------------------------------- the model


def layer_plan(size: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, role) of every initializer, in graph order, for about ``size`` bytes."""
    block = 4 * (WIDTH * WIDTH * 9 + WIDE * WIDTH + WIDTH * WIDE + 2 * WIDTH + WIDE)
    fixed = 4 * (WIDTH * STEM * 9 + WIDTH + CLASSES * WIDTH + CLASSES)
    blocks = max(1, round((size - fixed) / block))
    plan = [("conv0.weight", (WIDTH, STEM, 3, 3), "w"), ("conv0.bias", (WIDTH,), "b")]
    for b in range(blocks):
        for i, (cout, cin, k) in enumerate(((WIDTH, WIDTH, 3), (WIDE, WIDTH, 1), (WIDTH, WIDE, 1))):
            name = f"block{b}.conv{i}"
            plan += [(f"{name}.weight", (cout, cin, k, k), "w"), (f"{name}.bias", (cout,), "b")]
    plan += [("head.weight", (CLASSES, WIDTH), "w"), ("head.bias", (CLASSES,), "b")]
    return plan


def generate(path: str, size: int, layout: str) -> None:
    """Write the model, streaming the weights: memory stays small whatever the size."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    rng = np.random.default_rng(0)
    data_name = path.name + ".data"
    inits, nodes, x = [], [], "x"
    with open(path.parent / data_name, "wb") as data:
        for name, shape, role in layer_plan(size):
            fan_in = int(np.prod(shape[1:])) if role == "w" else 1
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= np.float32((2.0 / fan_in) ** 0.5 if role == "w" else 0.01)
            tensor = TensorProto(name=name, dims=shape, data_type=TensorProto.FLOAT)
            raw = values.tobytes()
            if len(raw) >= EXTERNAL_THRESHOLD:
                offset = data.tell()
                data.write(raw)
                for key, value in (
                    ("location", data_name),
                    ("offset", offset),
                    ("length", len(raw)),
                ):
                    tensor.external_data.add(key=key, value=str(value))
                tensor.data_location = TensorProto.EXTERNAL
            else:
                tensor.raw_data = raw
            inits.append(tensor)
            if name.endswith(".bias") and name != "head.bias":
                conv = name[: -len(".bias")]
                pads = [1, 1, 1, 1] if inits[-2].dims[-1] == 3 else [0, 0, 0, 0]
                nodes += [
                    helper.make_node(
                        "Conv", [x, f"{conv}.weight", name], [f"{conv}.out"], name=conv, pads=pads
                    ),
                    helper.make_node(
                        "Relu", [f"{conv}.out"], [f"{conv}.relu"], name=f"{conv}.relu"
                    ),
                ]
                x = f"{conv}.relu"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node(
            "Gemm", ["flat", "head.weight", "head.bias"], ["y"], name="head", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEM, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "bench_scale"
    onnx.save(model, path)
    if layout == "embedded":  # onnx's own embedding of the same tensors
        onnx.save(onnx.load(str(path)), path)
        (path.parent / data_name).unlink()


# --------------------------------------------------------------------------- the baselines


def _sobel_into(values):
    import numpy as np

    values = values.copy()
    values[:, :] = np.array(SOBEL_X, np.float32)
    return values


def naive(src: str, dst: str) -> None:
    """onnx.load -> replace conv0.weight -> onnx.save, in the source's layout."""
    import onnx
    from onnx import numpy_helper

    external = any(
        onnx.external_data_helper.uses_external_data(t)
        for t in onnx.load(src, load_external_data=False).graph.initializer
    )
    model = onnx.load(src)
    tensor = next(t for t in model.graph.initializer if t.name == "conv0.weight")
    tensor.CopyFrom(
        numpy_helper.from_array(_sobel_into(numpy_helper.to_array(tensor)), tensor.name)
    )
    onnx.save(model, dst, save_as_external_data=external, location=Path(dst).name + ".data")


def with_onnx_ir(src: str, dst: str) -> None:
    """onnx_ir.load -> replace conv0.weight -> onnx_ir.save, in the source's layout."""
    import onnx_ir as ir

    model = ir.load(src)
    value = model.graph.initializers["conv0.weight"]
    external = any(
        isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()
    )
    value.const_value = ir.tensor(_sobel_into(value.const_value.numpy()), name=value.name)
    ir.save(model, dst, external_data=Path(dst).name + ".data" if external else None)


def raw_generate_artifacts(src: str, out: str) -> None:
    """ONNX Runtime's own generate_artifacts, imported without torch as onnxfix does."""
    import types

    import onnx
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    package = types.ModuleType("onnxruntime.training")
    package.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    sys.modules["onnxruntime.training"] = package
    from onnxruntime.training import artifacts

    light = onnx.load(src, load_external_data=False)
    params = [t.name for t in light.graph.initializer]
    total = sum(p.stat().st_size for p in files_of(Path(src)))
    model = src if total > EMBEDDED_LIMIT else onnx.load(src)  # ORT wants a path above 2 GiB
    artifacts.generate_artifacts(
        model,
        requires_grad=[p for p in params if p != "conv0.weight"],
        frozen_params=["conv0.weight"],
        loss=artifacts.LossType.MSELoss,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=out,
    )


TASKS = {
    "generate": lambda p, s, lay: generate(p, int(s), lay),
    "naive": naive,
    "onnx_ir": with_onnx_ir,
    "raw": raw_generate_artifacts,
}


# --------------------------------------------------------------------------- measuring


def _tree_rss(root: int) -> int:
    """Sum of VmRSS (bytes) over ``root`` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [p for p, parent in parents.items() if parent == pid and p not in tree]
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class Failed(Exception):
    """A measured command exited non-zero; args: (wall seconds, why, in one line)."""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("Error:", "RuntimeError", "ValueError"))]
    return (errors or lines or ["(no output)"])[-1][:300]


def measure(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, int, int]:
    """Wall seconds, ru_maxrss and sampled process-tree peak RSS (bytes) of one command."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))  # its children too
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        timer.cancel()
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            text = err.read().decode(errors="replace")
            why = "timed out" if wall >= timeout else f"exit {proc.returncode}: {_last_line(text)}"
            raise Failed(wall, why)
    return wall, usage.ru_maxrss * 1024, peak[0]


def files_of(model: Path) -> list[Path]:
    data = model.with_name(model.name + ".data")
    return [model, data] if data.exists() else [model]


def remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".data").unlink(missing_ok=True)


def parse_size(text: str) -> int:
    for unit, factor in (("KB", 10**3), ("MB", 10**6), ("GB", 10**9)):
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def ir_python(given: str | None) -> str | None:
    """An interpreter that can import onnx_ir: --ir-python, or this one."""
    for python in filter(None, (given, sys.executable)):
        ok = subprocess.run([python, "-c", "import onnx_ir"], capture_output=True).returncode == 0
        if ok:
            return python
    return None


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.rows = args, work, []
        self.py = sys.executable
        self.me = [self.py, str(Path(__file__).resolve()), "task"]
        self.onnxfix = [args.onnxfix_python or self.py, "-m", "onnxfix"]
        self.ir_python = ir_python(args.ir_python) if "onnx_ir" in args.ops else None
        if "onnx_ir" in args.ops and self.ir_python is None:
            print("note: onnx_ir is not importable; its rows are left out", file=sys.stderr)

    def run(self) -> None:
        for size_text in self.args.sizes:
            size = parse_size(size_text)
            for layout in self.args.layouts:
                if layout == "embedded" and size >= EMBEDDED_LIMIT:
                    print(f"note: no embedded {size_text} model (over 2 GiB)", file=sys.stderr)
                    continue
                self.one_model(size_text, size, layout)

    def commands(
        self, model: Path, w: Path, layout: str
    ) -> dict[str, tuple[list[str], list[Path]]]:
        """Each operation's command and the outputs to remove before each repeat."""
        fixed, art = w / "fixed.onnx", w / "art"
        set_kernel = ["set-kernel", "--layer", "#0", "--kernel", "sobel-x"]
        make = [*self.onnxfix, "make-artifacts", str(fixed), "-o", str(art), "--force"]
        cmds = {
            "cp": (["cp", *map(str, files_of(model)), str(w / "copy")], [w / "copy"]),
            "inspect": ([*self.onnxfix, "inspect", str(model)], []),
            "set-kernel": (
                [*self.onnxfix, *set_kernel[:1], str(model), *set_kernel[1:], "-o", str(fixed)],
                [fixed],
            ),
            "onnx": ([*self.me, "naive", str(model), str(w / "naive.onnx")], [w / "naive.onnx"]),
            "raw-generate-artifacts": ([*self.me, "raw", str(fixed), str(w / "raw")], [w / "raw"]),
            "make-artifacts-no-self-test": ([*make, "--no-self-test"], [art]),
            "make-artifacts": (make, [art]),
            "make-artifacts-full-self-test": ([*make, "--full-self-test"], [art]),
            "export": (
                [*self.onnxfix, "export", str(art), "-o", str(w / "exported.onnx")],
                [w / "exported.onnx"],
            ),
        }
        if layout == "external":
            in_place = w / "in_place" / model.name
            cmds["set-kernel-in-place"] = (
                [*self.onnxfix, *set_kernel[:1], str(in_place), *set_kernel[1:], "--in-place"],
                [],
            )
        if self.ir_python:
            cmds["onnx_ir"] = (
                [self.ir_python, *self.me[1:], "onnx_ir", str(model), str(w / "ir.onnx")],
                [w / "ir.onnx"],
            )
        return cmds

    def prepare(self, op: str, model: Path, w: Path, cmds: dict) -> None:
        """Untimed set-up: the copy the in-place run changes, the inputs later ops need."""
        if op == "set-kernel-in-place":
            (w / "in_place").mkdir(exist_ok=True)
            for f in files_of(model):
                shutil.copy(f, w / "in_place" / f.name)
        needs_fixed = (
            "raw-generate-artifacts",
            "make-artifacts-no-self-test",
            "make-artifacts",
            "make-artifacts-full-self-test",
        )
        if op in (*needs_fixed, "export") and not (w / "fixed.onnx").exists():
            measure(cmds["set-kernel"][0], w, self.args.timeout)
        if op == "export" and not (w / "art").exists():
            with contextlib.suppress(Failed):  # export then fails too, and says why
                measure([*cmds["make-artifacts"][0], "--no-self-test"], w, self.args.timeout)

    def one_model(self, size_text: str, size: int, layout: str) -> None:
        w = self.work / f"{size_text}-{layout}"
        w.mkdir()
        model = w / "model.onnx"
        print(f"generating the {size_text} {layout} model ...", file=sys.stderr)
        subprocess.run([*self.me, "generate", str(model), str(size), layout], check=True)
        real = sum(p.stat().st_size for p in files_of(model))
        cmds = self.commands(model, w, layout)
        cp_wall = None
        for op in self.args.ops:
            if op not in cmds:
                continue
            cmd, outputs = cmds[op]
            self.prepare(op, model, w, cmds)
            runs = []
            for _ in range(self.args.repeats):
                remove(*outputs)
                for folder in {"cp": "copy", "raw-generate-artifacts": "raw"}.get(op, "").split():
                    (w / folder).mkdir()  # cp and generate_artifacts write into a folder
                os.sync()  # the previous run's write-back must not land in this one's time
                try:
                    runs.append(measure(cmd, w, self.args.timeout))
                except Failed as e:
                    runs, error = [(e.args[0], 0, 0)], e.args[1]
                    break
            else:
                error = None
            wall = statistics.median(r[0] for r in runs)
            rss, tree = max(r[1] for r in runs), max(r[2] for r in runs)
            if op == "cp":
                cp_wall = wall
                remove(w / "copy")
            row = {
                "operation": LABELS[op],
                "layout": layout,
                "size": size_text,
                "bytes": real,
                "wall": wall,
                "walls": [r[0] for r in runs],
                "x_cp": wall / cp_wall if cp_wall else None,
                "rss": rss,
                "tree_rss": tree,
                "error": error,
                "load": os.getloadavg()[0],  # other work on the machine skews the numbers
            }
            self.rows.append(row)
            print(format_row(row), file=sys.stderr, flush=True)
        shutil.rmtree(w)


def format_row(r: dict) -> str:
    if r["error"]:
        return (
            f"| {r['operation']} | {r['layout']} | {r['size']} | failed after {r['wall']:.1f} s: "
            f"{r['error']} | - | - | - | - |"
        )
    ratio = f"{r['x_cp']:.2f}" if r["x_cp"] is not None else "-"
    biggest = max(r["rss"], r["tree_rss"])
    return (
        f"| {r['operation']} | {r['layout']} | {r['size']} | {r['wall']:.2f} | {ratio} | "
        f"{r['rss'] / 1e6:.0f} | {r['tree_rss'] / 1e6:.0f} | {biggest / r['bytes']:.2f} |"
    )


HEADER = (
    "| operation | layout | size | wall s (median) | x cp | peak RSS MB | tree RSS MB | RSS / size |\n"
    "|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["task"]:  # a measured or set-up step, in its own process
        TASKS[argv[1]](*argv[2:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100MB", help="comma-separated, e.g. 100MB,1GB,3GB")
    parser.add_argument("--repeats", type=int, default=3, help="runs per operation; the median")
    parser.add_argument("--workdir", type=Path, help="where the models go (default: a temp dir)")
    parser.add_argument("--layouts", default="embedded,external")
    parser.add_argument("--ops", default=",".join(OPS), help=f"any of: {', '.join(OPS)}")
    parser.add_argument("--ir-python", help="a Python that can import onnx_ir, if this one cannot")
    parser.add_argument(
        "--onnxfix-python",
        help="run onnxfix with this interpreter (e.g. a venv with a plain pip install)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    parser.add_argument("--json", type=Path, help="also write the rows, every repeat's wall time")
    args = parser.parse_args(argv)
    args.sizes = args.sizes.split(",")
    args.layouts = args.layouts.split(",")
    args.ops = args.ops.split(",")
    unknown = set(args.ops) - set(OPS) or set(args.layouts) - {"embedded", "external"}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_scale.", dir=args.workdir) as tmp:
        bench = Bench(args, Path(tmp))
        bench.run()
    print(HEADER)
    for row in bench.rows:
        print(format_row(row))
    loads = [row["load"] for row in bench.rows]
    if loads:
        print(f"\n1-minute load average after each operation: {min(loads):.2f} to {max(loads):.2f}")
    if args.json:
        args.json.write_text(json.dumps(bench.rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

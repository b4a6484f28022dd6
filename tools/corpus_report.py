"""Run every model of the test corpus through onnxfix and through raw onnxruntime-training.

    python tools/corpus_report.py [--only SUBSTRING] [--skip-large] [--out docs/corpus.md]

For each model: (a) raw ONNX Runtime 1.19.2: ``generate_artifacts`` with the first conv's weight
in ``frozen_params`` and every other float initializer in ``requires_grad``, MSE, AdamW, the
written models lowered to IR 10 (without that, nothing loads with onnx >= 1.18), then one
training step; (b) onnxfix: ``set-kernel`` on the first conv, ``make-artifacts --loss mse`` (with
its self-test), then three training steps through the training API, checking the fixed kernel is
bit-identical and something else trained. Each runs in its own process, with a time limit.
Prints a markdown table (model, exporter, what onnxfix needed, onnxfix result, raw result).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from tests.support.corpus import (  # noqa: E402
    PADDLE_CLS_MODEL,
    RAPIDOCR_MODELS,
    onnx_backend_models,
    rapidocr_cache_dir,
    torch_models,
)

# The light_* zoo models whose ConstantOfShape weights materialise to hundreds of MB.
LARGE = ("light_bvlc_alexnet", "light_vgg19", "light_zfnet512")

RAW = textwrap.dedent(
    """
    import json, os, sys, types
    import numpy as np, onnx, onnxruntime
    onnxruntime.set_default_logger_severity(3)
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import artifacts
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    path, out = sys.argv[1], sys.argv[2]
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    frozen = [conv.input[1]] if conv.input[1] in inits else []
    grad = [n for n, t in inits.items() if t.data_type == 1 and n not in frozen]
    stage = "generate_artifacts"
    try:
        artifacts.generate_artifacts(model, requires_grad=grad, frozen_params=frozen,
            loss=artifacts.LossType.MSELoss, optimizer=artifacts.OptimType.AdamW, artifact_directory=out)
        for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
            m = onnx.load(os.path.join(out, name)); m.ir_version = 10; onnx.save(m, os.path.join(out, name))
        stage = "loading the artifacts"
        state = CheckpointState.load_checkpoint(os.path.join(out, "checkpoint"))
        module = Module(os.path.join(out, "training_model.onnx"), state, os.path.join(out, "eval_model.onnx"))
        opt = Optimizer(os.path.join(out, "optimizer_model.onnx"), module)
        stage = "a training step"
        ev = onnx.load(os.path.join(out, "eval_model.onnx"))
        feeds = []
        names = module.input_names()
        for i in ev.graph.input:
            if i.name not in names:
                continue
            dims = [d.dim_value if d.dim_value > 0 else (1 if k == 0 else 32) for k, d in enumerate(i.type.tensor_type.shape.dim)]
            dt = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            feeds.append(np.random.default_rng(0).normal(size=dims).astype(dt))
        module.train(); loss = module(*feeds); opt.step()
        print(json.dumps({"ok": True, "loss": float(loss)}))
    except Exception as e:
        msg = str(e).strip().splitlines()
        print(json.dumps({"ok": False, "stage": stage, "error": (msg[0] if msg else type(e).__name__)[:2000]}))
    """
)

ONNXFIX = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pathlib import Path
    import onnxfix
    from onnxfix.commands.inspect import inspect_model
    from onnxfix.training.selftest import open_session, synthetic_batch
    from onnxfix.provenance import tensor_digest
    path, out = Path(sys.argv[1]), Path(sys.argv[2])
    stage = "set-kernel"
    try:
        first = next(c for c in inspect_model(path).convs if not c.quantized)
        onnxfix.set_kernel(path, out / "fixed.onnx", layers=[f"#{first.index}"], kernel="box")
        stage = "make-artifacts"
        shapes = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
        result = onnxfix.make_artifacts(out / "fixed.onnx", out / "art", loss="mse", input_shapes=shapes)
        m = result.manifest
        stage = "training"
        state, module, optimizer = open_session(out / "art")
        before = {n: np.array(state.parameters[n].data) for n in m["trainable"]}
        batch = synthetic_batch(m, scale=result.selftest["batch_scale"])
        module.train()
        losses = []
        for _ in range(3):
            losses.append(float(module(*batch))); optimizer.step(); module.lazy_reset_grad()
        fixed_ok = all(tensor_digest(np.asarray(state.parameters[n].data)) == d for n, d in m["fixed_kernels"].items())
        changed = sum(not np.array_equal(before[n], state.parameters[n].data) for n in m["trainable"])
        print(json.dumps({"ok": fixed_ok and changed > 0 and all(np.isfinite(losses)), "losses": losses,
            "fixed_ok": fixed_ok, "changed": changed, "trainable": len(m["trainable"]),
            "blocked": len(m["blocked"]), "blocked_by": sorted(set(m["blocked"].values())),
            "changes": m["changes"], "rewrites": m["rewrites"], "notes": m["notes"]}))
    except onnxfix.OnnxfixError as e:
        print(json.dumps({"ok": False, "refused": True, "stage": stage, "error": str(e)[:300]}))
    """
)


def corpus(skip_large: bool) -> list[tuple[str, str, Path]]:
    models = [
        (
            m.id,
            {"torchscript": "PyTorch TorchScript", "dynamo": "PyTorch dynamo"}[m.exporter],
            m.path,
        )
        for m in torch_models()
    ]
    models.append(("paddle cls (ch_ppocr_mobile_v2.0)", "paddle2onnx", PADDLE_CLS_MODEL))
    for kind in ("det", "rec"):
        path = rapidocr_cache_dir() / Path(RAPIDOCR_MODELS[kind][0]).name
        if path.exists():
            models.append((f"paddle {kind} ({path.stem})", "paddle2onnx", path))
    for path in onnx_backend_models():
        name = path.parent.name if path.name == "model.onnx" else path.stem
        if skip_large and name in LARGE:
            continue
        exporter = (
            "caffe2 (model zoo)" if name.startswith("light_") else "PyTorch 0.3 (onnx backend data)"
        )
        models.append((name, exporter, path))
    return models


# Real sizes for inputs whose spatial dims are named (PaddleOCR: text-line crops, pages).
INPUT_SHAPES = {
    "ch_ppocr_mobile_v2.0_cls_infer": {"x": [1, 3, 48, 192]},
    "ch_PP-OCRv4_det_infer": {"x": [1, 3, 64, 64]},
    "ch_PP-OCRv4_rec_infer": {"x": [1, 3, 48, 160]},
}


def run(code: str, path: Path, timeout: int) -> dict:
    shapes = json.dumps(INPUT_SHAPES.get(path.stem, {}))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(path), tmp, shapes],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout} s"}
    if proc.returncode < 0:
        return {"ok": False, "error": f"process died ({signal.Signals(-proc.returncode).name})"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"traceback: {tail[:160]}"}
    return json.loads(lines[-1])


def short(message: str) -> str:
    """ONNX Runtime's message without its source location and C++ signature."""
    if message.startswith("/onnxruntime_src/"):
        message = re.split(r"\)>? ", message)[-1]
        message = re.sub(r"^.*? was false\. ", "", message)
    return message.replace("|", "/")[:140]


def needed(r: dict) -> str:
    items = [c.split(" (")[0] for c in r.get("changes", [])]
    items += [w.split(" ->")[0].split(":")[0] for w in r.get("rewrites", [])]
    if r.get("notes"):
        items.append("loss on logits" if any("logits" in n for n in r["notes"]) else "")
    if r.get("blocked"):
        items.append(
            f"{r['blocked']} params frozen: "
            + "; ".join(b.split(": ", 1)[0] for b in r["blocked_by"])
        )
    return ", ".join(sorted({i for i in items if i}, key=items.index)) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = [
        "| model | exporter | what onnxfix needed | onnxfix | raw onnxruntime-training |",
        "|---|---|---|---|---|",
    ]
    for name, exporter, path in corpus(args.skip_large):
        if args.only not in name:
            continue
        ours, raw = run(ONNXFIX, path, args.timeout), run(RAW, path, args.timeout)
        if ours.get("ok"):
            verdict = (
                f"trains ({ours['changed']}/{ours['trainable']} changed, kernel bit-identical)"
            )
        elif "fixed_ok" in ours:
            verdict = (
                f"FAILS: kernel bit-identical {ours['fixed_ok']}, {ours['changed']}/"
                f"{ours['trainable']} changed, losses {ours['losses']}"
            )
        elif ours.get("refused"):
            verdict = f"refused: {ours['error']}"
        else:
            verdict = f"FAILS: {ours.get('stage', '')} {ours['error']}"
        raw_text = (
            "trains" if raw.get("ok") else f"fails ({raw.get('stage', '?')}): {short(raw['error'])}"
        )
        row = f"| {name} | {exporter} | {needed(ours)} | {verdict} | {raw_text} |"
        print(row, flush=True)
        rows.append(row)
    if args.out:
        Path(args.out).write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())

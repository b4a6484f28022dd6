"""Survey the ONNX model corpus that onnxfix is tested on and write ``tests/data/SURVEY.md``.

Run with the project venv (onnx + onnxruntime-training, no torch)::

    /work/venv/bin/python tools/survey_corpus.py            # writes tests/data/SURVEY.md
    /work/venv/bin/python tools/survey_corpus.py --stdout   # prints it instead

The corpus is the one ``tests/corpus.py`` describes: the exported PyTorch models in
``tests/data/torch`` (see their MANIFEST.json), the PaddleOCR models of rapidocr-onnxruntime
(fetched into a cache by ``tests/corpus.py``; skipped when offline), and the conv / light models
shipped as backend test data inside the ``onnx`` package.

The analysis helpers at the top (``analyse_model`` and friends) need only ``onnx``; the
exporter script ``tools/make_torch_models.py`` imports them to fill the MANIFEST, so keep this
module importable without onnxruntime, pytest or torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

REPO = Path(__file__).resolve().parent.parent

CONV_OPS = ("Conv", "ConvTranspose")
# Ops whose presence is worth knowing before building ORT training artifacts around a model:
# activations whose gradients ORT training has (or lacked) only in some versions, resampling,
# recurrent layers, transposed convolutions and control flow.
WATCH_OPS = (
    "HardSigmoid",
    "HardSwish",
    "PRelu",
    "Resize",
    "Upsample",
    "LSTM",
    "GRU",
    "RNN",
    "ConvTranspose",
    "If",
    "Loop",
    "Scan",
)
CONTROL_FLOW = ("If", "Loop", "Scan")


# Hand-written observations appended to SURVEY.md (keep them true when the corpus changes).
NOTES = """
## Notes

Written by hand in `tools/survey_corpus.py` (NOTES); keep them true when the corpus changes.
Facts per file are in `tests/data/torch/MANIFEST.json`.

- **Every model loads in onnxruntime 1.19.2**, and every model with reference data reproduces
  it (torch models: their `.io.npz`; backend conv tests: `test_data_set_0`) to ~1e-7.
- **Conv weights come from four different places**: initializers (both PyTorch exporters),
  initializers that are also graph inputs (PyTorch 0.3 conv tests, IR 3), `Constant` nodes
  (all three PaddleOCR models: paddle2onnx writes *no initializers at all*), and
  `ConstantOfShape` nodes fed by int64 shape initializers (the caffe2-era `light_*` models,
  where every weight tensor is a single fill value, while BatchNormalization parameters are
  real initializers listed as graph inputs). No model routes a conv weight through Identity,
  a graph input without initializer, or a non-conv consumer.
- **BatchNormalization after Conv is folded by both PyTorch exporters in eval mode.** The
  TorchScript exporter renames a folded weight (`onnx::Conv_30`); the dynamo exporter
  (onnxscript rewrite `FuseBatchNormIntoConv`) keeps the module's name (`conv1.weight`)
  although the values are now the folded ones. Paddle's cls model keeps 35 BN nodes unfolded.
- **Shared weights are kept shared** by both exporters: `shared_weight.*` has one
  `shared.weight` initializer read by two Conv nodes.
- **External data (dynamo only)**: the exporter moves tensors larger than 256 bytes
  (`onnx_ir.save`'s default `size_threshold_bytes`) to `NAME.dynamo.onnx.data` and keeps
  smaller ones inline, so one model mixes
  external and embedded conv weights (`mobile_block.dynamo`: the SE 1x1 convs are inline).
  It wrote a `.data` file for every corpus model, so none had to be forced.
- **Dynamo turns some float constants into initializers** named `val_N`: Resize scales
  (`fpn_resize`), the LSTM zero initial state (one tensor read by both LSTM inputs 5 and 6),
  pre-transposed Linear weights (`MatMul[1]`), reshaped LSTM W/R/B and PReLU slopes. Marking
  "all float initializers" trainable therefore breaks ORT's gradient builder on these models
  (a quick probe saw `failed to find NodeArg by name: val_0_grad` and `Duplicate definition
  of name (val_17_grad)`); the TorchScript exporter computes the same values with `Constant`
  (Resize scales) and `Shape`/`Gather`/`Expand` nodes (LSTM initial states).
- **ORT training limits seen in a quick artifact probe** (MSE loss, AdamW, conv weights
  frozen, everything else trainable): `HardSwish` has no gradient builder in 1.19.2
  (`mobile_block`, both exporters); IR 3 models (all backend-data models) fail
  `generate_artifacts` because the loss block adds an initializer that IR<4 also wants as a
  graph input; the Paddle models have no initializer to train or freeze until their Constant
  weights are lifted. Paddle's HardSwish is spelled `x * Clip(x+3, 0, 6) / 6` (Clip/Div/Mul),
  which is differentiable.
- **Shapes**: Paddle inputs are dynamic (`p2o.DynamicDimension.*`, and the cls model even
  writes `dim_value: -1`); torch and backend models have fixed shapes. The PP-OCRv4 rec model
  ends in Softmax, the det model in Sigmoid; the light models end in Softmax except
  densenet121, whose graph output is produced directly by its last (1x1) Conv.
"""

# --------------------------------------------------------------------------- analysis helpers


def iter_nodes(graph: onnx.GraphProto, depth: int = 0):
    """Yield ``(node, depth)`` for every node of ``graph`` and of its subgraphs (If/Loop/Scan)."""
    for node in graph.node:
        yield node, depth
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g, depth + 1)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g, depth + 1)


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def value_info_shape(vi: onnx.ValueInfoProto) -> list[Any]:
    """Shape of a graph input/output: ints for fixed dims, strings for symbolic ones."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    dims: list[Any] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return dims


def value_info_dtype(vi: onnx.ValueInfoProto) -> str:
    elem = vi.type.tensor_type.elem_type
    return onnx.TensorProto.DataType.Name(elem) if elem else "?"


def weight_source(graph: onnx.GraphProto, name: str) -> str:
    """Where the tensor ``name`` of the top-level ``graph`` comes from.

    One of ``initializer``, ``initializer+graph_input`` (IR<4 style: also listed as a graph
    input), ``graph_input``, ``Constant``, ``ConstantOfShape``, ``Identity<-X`` (an Identity
    chain ending at X), ``<OpType>`` (computed by another node, e.g. ``DequantizeLinear``),
    ``(none)`` for an empty/absent input, or ``unknown``.
    """
    if not name:
        return "(none)"
    inits = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input}
    producers = {out: n for n in graph.node for out in n.output}
    hops = 0
    prefix = ""
    while True:
        if name in inits:
            return prefix + ("initializer+graph_input" if name in inputs else "initializer")
        if name in inputs:
            return prefix + "graph_input"
        node = producers.get(name)
        if node is None:
            return prefix + "unknown"
        if node.op_type == "Identity" and hops < 16:
            hops += 1
            prefix = "Identity<-"
            name = node.input[0]
            continue
        return prefix + node.op_type


def conv_weights(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """One entry per top-level Conv/ConvTranspose node: its weight/bias names and sources."""
    graph = model.graph
    uses: Counter[str] = Counter()
    consumers: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in CONV_OPS and len(node.input) > 1:
            uses[node.input[1]] += 1
        for name in set(node.input):
            consumers[name] += 1
    init_by_name = {i.name: i for i in graph.initializer}
    entries = []
    for node in graph.node:
        if node.op_type not in CONV_OPS:
            continue
        w = node.input[1] if len(node.input) > 1 else ""
        b = node.input[2] if len(node.input) > 2 else ""
        init = init_by_name.get(w)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        entry: dict[str, Any] = {
            "node": node.name,
            "op_type": node.op_type,
            "weight": w,
            "weight_source": weight_source(graph, w),
            "weight_shape": list(init.dims) if init is not None else None,
            "weight_external": bool(
                init is not None and init.data_location == onnx.TensorProto.EXTERNAL
            ),
            "bias": b or None,
            "bias_source": weight_source(graph, b) if b else None,
            "group": int(attrs.get("group", 1)),
            "shared_by_convs": uses[w],
            "weight_consumers": consumers[w],
        }
        entries.append(entry)
    return entries


def initializer_table(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Every top-level initializer: name, dtype, shape, external or not, and its consumers.

    ``consumers`` lists ``"OpType[input index]"`` for each node input that reads it, which
    tells parameters (Conv[1], Gemm[1], LSTM[1..3], PRelu[1]) from float constants that are
    not (Resize[2] scales, LSTM[5]/[6] zero initial states) at a glance.
    """
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append(f"{node.op_type}[{idx}]")
    return [
        {
            "name": init.name,
            "dtype": onnx.TensorProto.DataType.Name(init.data_type),
            "shape": list(init.dims),
            "external": init.data_location == onnx.TensorProto.EXTERNAL,
            "consumers": consumers.get(init.name, []),
        }
        for init in model.graph.initializer
    ]


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The external data ``location`` values referenced by the model's initializers."""
    files = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for kv in init.external_data:
                if kv.key == "location":
                    files.add(kv.value)
    return sorted(files)


def analyse_model(path: Path) -> dict[str, Any]:
    """Facts about one model file that the MANIFEST and the SURVEY report (onnx only)."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    all_ops = Counter(n.op_type for n, _ in iter_nodes(graph))
    sub_ops = Counter(n.op_type for n, d in iter_nodes(graph) if d > 0)
    init_names = {i.name for i in graph.initializer}
    inits_as_inputs = [i.name for i in graph.input if i.name in init_names]
    producers = {out: n for n in graph.node for out in n.output}
    softmax_outputs = [
        o.name
        for o in graph.output
        if o.name in producers and producers[o.name].op_type in ("Softmax", "LogSoftmax")
    ]
    ext_files = external_data_files(model)
    try:
        onnx.checker.check_model(str(path))
        checker = "ok"
    except Exception as exc:  # noqa: BLE001 - we report any failure
        checker = str(exc).strip().splitlines()[0][:200]
    n_ext = sum(1 for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL)
    size = path.stat().st_size + sum(
        (path.parent / f).stat().st_size for f in ext_files if (path.parent / f).exists()
    )
    return {
        "ir_version": model.ir_version,
        "opset": default_opset(model),
        "opset_imports": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            {"name": i.name, "shape": value_info_shape(i), "dtype": value_info_dtype(i)}
            for i in graph.input
            if i.name not in init_names
        ],
        "outputs": [
            {"name": o.name, "shape": value_info_shape(o), "dtype": value_info_dtype(o)}
            for o in graph.output
        ],
        "op_counts": dict(sorted(all_ops.items())),
        "op_types": sorted(all_ops),
        "subgraph_op_types": sorted(sub_ops),
        "n_conv": all_ops.get("Conv", 0),
        "n_convtranspose": all_ops.get("ConvTranspose", 0),
        "conv_weights": conv_weights(model),
        "n_initializers": len(graph.initializer),
        "initializers_as_inputs": len(inits_as_inputs),
        "n_local_functions": len(model.functions),
        "softmax_outputs": softmax_outputs,
        "external_data_files": ext_files,
        "n_external_initializers": n_ext,
        "size_bytes": size,
        "checker": checker,
    }


# --------------------------------------------------------------------------- survey (needs ORT)


def ort_check(path: Path, reference: dict[str, Any] | None = None) -> tuple[str, str]:
    """Try an onnxruntime InferenceSession; optionally compare against reference outputs.

    Returns ``(load, compare)``: ``load`` is ``yes`` or ``NO: <error>``; ``compare`` is a
    max-abs-diff summary or ``""``.
    """
    import numpy as np
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - we report any failure
        msg = str(exc).replace("\n", " ").replace("|", "/")
        return f"NO: {msg[:160]}", ""
    if not reference:
        return "yes", ""
    try:
        feeds = {}
        for inp, arr in zip(sess.get_inputs(), reference["inputs"]):
            feeds[inp.name] = arr
        outs = sess.run(None, feeds)
        diffs = []
        for got, want in zip(outs, reference["outputs"]):
            if np.shape(got) != np.shape(want):
                diffs.append(f"shape {np.shape(got)} != {np.shape(want)}")
            else:
                d = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                diffs.append(f"{d:.1e}")
        return "yes", "max abs diff " + ", ".join(diffs)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).replace("\n", " ").replace("|", "/")
        return "yes", f"run failed: {msg[:120]}"


def backend_reference(path: Path) -> dict[str, Any] | None:
    """``test_data_set_0`` inputs/outputs next to a backend-data ``model.onnx``, if complete."""
    ds = path.parent / "test_data_set_0"
    if not ds.is_dir():
        return None
    sys.path.insert(0, str(REPO))
    from tests.support.corpus import onnx_backend_test_data

    inputs, outputs = onnx_backend_test_data(path)
    if not inputs or not outputs:
        return None
    return {"inputs": inputs, "outputs": outputs}


def collect_corpus() -> list[dict[str, Any]]:
    """Every corpus model: ``{"group", "label", "path", "reference"}`` (path None if missing)."""
    import numpy as np
    import pytest

    sys.path.insert(0, str(REPO))
    from tests.support import corpus

    items: list[dict[str, Any]] = []
    for tm in corpus.torch_models():
        ref = None
        if tm.io_path.exists():
            with np.load(tm.io_path) as z:
                ref = {"inputs": [z["input"]], "outputs": [z["output"]]}
        items.append({"group": "torch", "label": tm.path.name, "path": tm.path, "reference": ref})
    for kind in corpus.RAPIDOCR_MODELS:
        try:
            path = corpus.rapidocr_model(kind)
            label = f"rapidocr {corpus.RAPIDOCR_VERSION} {kind}: {path.name}"
        except pytest.skip.Exception as exc:
            path, label = None, f"rapidocr {kind} (skipped: {exc})"
        items.append({"group": "paddle", "label": label, "path": path, "reference": None})
    for path in corpus.onnx_backend_models():
        if path.name == "model.onnx":  # <group>/<test>/model.onnx
            label = f"{path.parent.parent.name}/{path.parent.name}"
        else:  # light/light_*.onnx
            label = f"{path.parent.name}/{path.name}"
        items.append(
            {
                "group": "onnx-backend",
                "label": label,
                "path": path,
                "reference": backend_reference(path),
            }
        )
    return items


def _fmt_source(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "-"
    first = entries[0]["weight_source"]
    counts = Counter(e["weight_source"] for e in entries)
    if len(counts) == 1:
        return first
    rest = ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))
    return f"{first} (all: {rest})"


def survey_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        path = item["path"]
        if path is None:
            rows.append({"item": item, "facts": None, "load": "not available", "compare": ""})
            continue
        facts = analyse_model(path)
        load, compare = ort_check(path, item["reference"])
        rows.append({"item": item, "facts": facts, "load": load, "compare": compare})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    import numpy as np
    import onnxruntime as ort

    lines = [
        "# Corpus survey",
        "",
        "Generated by `/work/venv/bin/python tools/survey_corpus.py` "
        f"(onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}). "
        "Do not edit by hand; rerun the script.",
        "",
        "Columns: **conv/convT** = number of Conv / ConvTranspose nodes (subgraphs included); "
        "**first conv weight** = where the weight of the first Conv/ConvTranspose node comes "
        "from (and the mix over all of them); **shared** = conv weights used by more than one "
        "conv node; **init∈inputs** = initializers also listed as graph inputs (IR<4 style); "
        "**watch ops** = ops present that ORT training may not handle "
        f"({', '.join(WATCH_OPS)}, Softmax at an output); **ORT** = loads in "
        "`onnxruntime.InferenceSession` (and, where reference data exists, max abs diff "
        "against it).",
        "",
    ]
    groups = [
        ("torch", "Exported PyTorch models (tests/data/torch)"),
        ("paddle", "PaddleOCR models (rapidocr-onnxruntime)"),
        ("onnx-backend", "onnx package backend test data"),
    ]
    for key, title in groups:
        lines += [
            f"## {title}",
            "",
            "| model | IR | opset | inputs | conv/convT | first conv weight | shared "
            "| init∈inputs | ext data | watch ops | ORT |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            item, facts = row["item"], row["facts"]
            if item["group"] != key:
                continue
            if facts is None:
                lines.append(f"| {item['label']} | | | | | | | | | | {row['load']} |")
                continue
            watch = [op for op in WATCH_OPS if op in facts["op_types"]]
            if facts["softmax_outputs"]:
                watch.append("Softmax@output")
            shared = sum(1 for e in facts["conv_weights"] if e["shared_by_convs"] > 1)
            ext = f"{facts['n_external_initializers']}/{facts['n_initializers']}"
            if not facts["n_external_initializers"]:
                ext = "-"
            ort_cell = row["load"] + (f"; {row['compare']}" if row["compare"] else "")
            inputs = ", ".join(
                f"{i['name']} "
                + "x".join(str(d) if isinstance(d, int) else "?" for d in i["shape"])
                for i in facts["inputs"]
            )
            lines.append(
                f"| {item['label']} | {facts['ir_version']} | {facts['opset']} | {inputs} "
                f"| {facts['n_conv']}/{facts['n_convtranspose']} "
                f"| {_fmt_source(facts['conv_weights'])} | {shared} "
                f"| {facts['initializers_as_inputs']} | {ext} "
                f"| {', '.join(watch) or '-'} | {ort_cell} |"
            )
        lines.append("")
    lines += highlights(rows)
    return "\n".join(lines) + "\n"


def highlights(rows: list[dict[str, Any]]) -> list[str]:
    """A few computed summary lines under the tables."""
    ok = [r for r in rows if r["facts"] is not None]
    not_loading = [r["item"]["label"] for r in ok if not r["load"].startswith("yes")]
    sources = Counter(e["weight_source"] for r in ok for e in r["facts"]["conv_weights"])
    ir_old = [r["item"]["label"] for r in ok if r["facts"]["ir_version"] < 4]
    missing = [r["item"]["label"] for r in rows if r["facts"] is None]
    bad_checker = [
        f"{r['item']['label']} ({r['facts']['checker']})"
        for r in ok
        if r["facts"]["checker"] != "ok"
    ]
    not_only_conv = sorted(
        {
            r["item"]["label"]
            for r in ok
            for e in r["facts"]["conv_weights"]
            if e["weight_consumers"] > e["shared_by_convs"]
        }
    )
    lines = [
        "## Computed highlights",
        "",
        f"- models surveyed: {len(ok)} (unavailable: {len(missing)})",
        "- conv weight sources over all conv nodes: "
        + ", ".join(f"{k} ×{v}" for k, v in sorted(sources.items())),
        f"- IR version < 4 (initializers usually also graph inputs): {len(ir_old)} models",
        f"- models that do not load in onnxruntime {len(not_loading)}: "
        + (", ".join(not_loading) or "none"),
    ]
    lines.append(
        f"- models failing onnx.checker.check_model: {len(bad_checker)}: "
        + ("; ".join(bad_checker) or "none")
    )
    lines.append(
        "- models where a conv weight also feeds a non-conv node: "
        + (", ".join(not_only_conv) or "none")
    )
    if missing:
        lines.append("- unavailable: " + "; ".join(missing))
    return lines + [""] + NOTES.strip().splitlines() + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    parser.add_argument(
        "--out", type=Path, default=REPO / "tests" / "data" / "SURVEY.md", help="output file"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    rows = survey_rows(collect_corpus())
    text = render(rows)
    if args.stdout:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out} ({len(rows)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Export the small PyTorch CNNs of onnxfix's test corpus to ONNX, with both exporters.

Run with the separate torch venv (the project venv must never get torch)::

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0 onnx onnxscript numpy
    /work/torchvenv/bin/python tools/make_torch_models.py

For every model NAME this writes into ``tests/data/torch/``:

- ``NAME.torchscript.onnx``: ``torch.onnx.export(..., dynamo=False, opset_version=17)``
  (the legacy TorchScript exporter, default names, constant folding on, eval mode);
- ``NAME.dynamo.onnx`` + ``NAME.dynamo.onnx.data``: ``torch.onnx.export(..., dynamo=True)``
  with the exporter's default opset and its own external-data choice; if it wrote no
  ``.data`` file, all tensors are moved to one (``size_threshold=0``) so every dynamo model
  of the corpus exercises external data;
- ``NAME.io.npz``: ``input`` and ``output`` (float32), a reference input and PyTorch's output;

and ``MANIFEST.json`` describing every file (see ``describe``). Everything is seeded; running
the script twice gives byte-identical files (checked with ``--check-determinism``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "torch"
TORCHSCRIPT_OPSET = 17

sys.dont_write_bytecode = True  # no tools/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
from survey_corpus import analyse_model, initializer_table  # noqa: E402  (onnx-only)

# --------------------------------------------------------------------------- models


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial statistics so folding them into convs matters."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.9 + 0.3)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.8 + 0.6)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


class CnnBn(nn.Module):
    """Conv+BN+ReLU, depthwise Conv+BN+ReLU, 1x1 Conv, global average pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.dw(x)))
        x = self.pw(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.gate(self.expand(F.relu(self.reduce(s))))
        return x * s


class MobileBlock(nn.Module):
    """MobileNetV3-like: Conv+HardSwish, depthwise conv, SE with HardSigmoid, PReLU, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.stem_act = nn.Hardswish()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw_act = nn.Hardswish()
        self.se = SqueezeExcite(16, 4)
        self.project = nn.Conv2d(16, 24, 1)
        self.prelu = nn.PReLU(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.dw_act(self.dw(x))
        x = self.se(x)
        x = self.prelu(self.project(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


class FpnResize(nn.Module):
    """Two stride-2 convs, an FPN-style top-down merge with nearest upsampling, dense output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.lat1 = nn.Conv2d(8, 8, 1)
        self.lat2 = nn.Conv2d(16, 8, 1)
        self.smooth = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = F.relu(self.c1(x))  # 1x8x16x16
        f2 = F.relu(self.c2(f1))  # 1x16x8x8
        p2 = self.lat2(f2)
        p1 = self.lat1(f1) + F.interpolate(p2, scale_factor=2, mode="nearest")
        return self.out(F.relu(self.smooth(p1)))  # 1x4x16x16


class ConvLstm(nn.Module):
    """CRNN-like text recogniser: conv features -> width sequence -> BiLSTM -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, (4, 1))
        self.lstm = nn.LSTM(32, 24, bidirectional=True)
        self.fc = nn.Linear(48, 11)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 1x8x16x32
        x = F.max_pool2d(F.relu(self.conv2(x)), (4, 2))  # 1x16x4x16
        x = F.relu(self.conv3(x))  # 1x32x1x16
        x = x.squeeze(2).permute(2, 0, 1)  # T=16 x N x 32
        x, _ = self.lstm(x)  # T x N x 48
        return self.fc(x)  # T x N x 11


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.c2 = nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv1d(8, 16, 3, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return self.fc(F.adaptive_avg_pool1d(x, 1).flatten(1))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 4, 3, padding=1)
        self.c2 = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        return self.fc(F.adaptive_avg_pool3d(x, 1).flatten(1))


class ConvTransposeNet(nn.Module):
    """Conv encoder, ConvTranspose2d decoder (the first one grouped, groups=2)."""

    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.e2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.d1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, groups=2)
        self.d2 = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.e1(x))  # 16x16
        x = F.relu(self.e2(x))  # 8x8
        x = F.relu(self.d1(x))  # 16x16
        return self.d2(x)  # 1x3x32x32


class SharedWeight(nn.Module):
    """Applies the same Conv2d module twice: one weight, two Conv nodes (if kept shared)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# name -> (module class, input shape, what the model is for)
MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...], str]] = {
    "cnn_bn": (CnnBn, (1, 3, 32, 32), "Conv+BN+ReLU, depthwise Conv+BN+ReLU, 1x1, GAP, Linear"),
    "mobile_block": (
        MobileBlock,
        (1, 3, 32, 32),
        "Conv+HardSwish, depthwise, SE with HardSigmoid, PReLU, Linear",
    ),
    "fpn_resize": (
        FpnResize,
        (1, 3, 32, 32),
        "two stride-2 convs, FPN merge with nearest interpolate (Resize), 1x1 dense output",
    ),
    "conv_lstm": (ConvLstm, (1, 1, 32, 64), "CRNN-like: convs, sequence, BiLSTM, Linear"),
    "conv1d": (Conv1dNet, (1, 4, 64), "Conv1d stack (dilated, grouped, strided)"),
    "conv3d": (Conv3dNet, (1, 2, 8, 16, 16), "Conv3d stack"),
    "convtranspose": (
        ConvTransposeNet,
        (1, 3, 32, 32),
        "Conv encoder, ConvTranspose2d decoder (groups=2, output_padding)",
    ),
    "shared_weight": (SharedWeight, (1, 3, 32, 32), "the same Conv2d module applied twice"),
}


def build(name: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    cls, shape, _ = MODELS[name]
    torch.manual_seed(seed)
    model = cls()
    gen = torch.Generator().manual_seed(seed + 1000)
    _randomise_bn(model, gen)
    model.eval()
    x = torch.randn(*shape, generator=gen)
    return model, x


# --------------------------------------------------------------------------- export


def export_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=TORCHSCRIPT_OPSET,
        )


# Node metadata the dynamo exporter writes that holds source paths and line numbers (of torch
# and of this script): dropped so the files depend neither on the checkout's location nor on
# edits to this script. Everything else the exporter wrote is kept as is.
STRIPPED_METADATA = ("pkg.torch.onnx.stack_trace",)


def _strip_source_metadata(path: Path) -> int:
    """Remove ``STRIPPED_METADATA`` entries from every node; the .data file is not touched."""
    model = onnx.load(str(path), load_external_data=False)
    removed = 0

    def strip(graph: onnx.GraphProto) -> None:
        nonlocal removed
        for node in graph.node:
            keep = [kv for kv in node.metadata_props if kv.key not in STRIPPED_METADATA]
            if len(keep) != len(node.metadata_props):
                removed += len(node.metadata_props) - len(keep)
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip(attr.g)
                for g in attr.graphs:
                    strip(g)

    strip(model.graph)
    for func in model.functions:
        strip(func)  # FunctionProto has .node like a graph
    # Serialize directly: initializers still point at the unchanged external data file.
    path.write_bytes(model.SerializeToString())
    return removed


def export_dynamo(model: nn.Module, x: torch.Tensor, path: Path) -> dict[str, object]:
    """Dynamo export; returns what was done about external data and metadata."""
    data_name = path.name + ".data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=True, verbose=False)
    data = path.parent / data_name
    info: dict[str, object] = {"exporter_wrote_data_file": data.exists(), "forced": False}
    if not data.exists():
        m = onnx.load(str(path))
        onnx.save(
            m,
            str(path),
            save_as_external_data=True,
            all_tensors_to_external_data=True,
            size_threshold=0,
            location=data_name,
        )
        info["forced"] = True
    info["stripped_node_metadata"] = {
        "keys": list(STRIPPED_METADATA),
        "entries_removed": _strip_source_metadata(path),
    }
    return info


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(path: Path, exporter: str, name: str, extra: dict[str, object]) -> dict[str, object]:
    facts = analyse_model(path)
    shared = sorted({e["weight"] for e in facts["conv_weights"] if e["shared_by_convs"] > 1})
    files = [path.name] + list(facts["external_data_files"])
    return {
        "file": path.name,
        "model": name,
        "description": MODELS[name][2],
        "exporter": exporter,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "producer": facts["producer"],
        "opset": facts["opset"],
        "opset_imports": facts["opset_imports"],
        "ir_version": facts["ir_version"],
        "inputs": facts["inputs"],
        "outputs": facts["outputs"],
        "op_types": facts["op_types"],
        "op_counts": facts["op_counts"],
        "batchnorm_folded": "BatchNormalization" not in facts["op_types"],
        "n_conv": facts["n_conv"],
        "n_convtranspose": facts["n_convtranspose"],
        "conv_weights": facts["conv_weights"],
        "conv_weight_sources": sorted({e["weight_source"] for e in facts["conv_weights"]}),
        "shared_conv_weights": shared,
        "n_initializers": facts["n_initializers"],
        "initializers": initializer_table(onnx.load(str(path), load_external_data=False)),
        "initializers_as_inputs": facts["initializers_as_inputs"],
        "external_data": bool(facts["external_data_files"]),
        "external_data_files": facts["external_data_files"],
        "n_external_initializers": facts["n_external_initializers"],
        "size_bytes": facts["size_bytes"],
        "sha256": {f: _sha256(path.parent / f) for f in files},
        "io_file": f"{name}.io.npz",
        **extra,
    }


def export_all(out_dir: Path, names: list[str]) -> dict[str, object]:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, name in enumerate(names):
        model, x = build(name, seed=1234 + i)
        with torch.no_grad():
            y = model(x)
        np.savez(
            out_dir / f"{name}.io.npz",
            input=x.numpy().astype(np.float32),
            output=y.numpy().astype(np.float32),
        )
        ts_path = out_dir / f"{name}.torchscript.onnx"
        export_torchscript(model, x, ts_path)
        entries.append(describe(ts_path, "torchscript", name, {"dynamo_external_data": None}))
        dy_path = out_dir / f"{name}.dynamo.onnx"
        for stale in (dy_path, out_dir / (dy_path.name + ".data")):
            if stale.exists():
                stale.unlink()
        info = export_dynamo(model, x, dy_path)
        entries.append(describe(dy_path, "dynamo", name, {"dynamo_external_data": info}))
        print(f"exported {name}", file=sys.stderr)
    return {
        "generator": "tools/make_torch_models.py",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxscript_version": _dist_version("onnxscript"),
        "onnx_ir_version": _dist_version("onnx_ir"),
        "torchscript_opset": TORCHSCRIPT_OPSET,
        "models": {name: MODELS[name][2] for name in names},
        "files": sorted(entries, key=lambda e: e["file"]),
    }


def _dist_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="subset of models")
    parser.add_argument(
        "--check-determinism",
        action="store_true",
        help="export twice into temporary folders and compare the bytes of every file",
    )
    args = parser.parse_args(argv)
    names = args.only or list(MODELS)
    # "torchvision is not installed. Skipping torchvision::nms" and the like are noise here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    if args.check_determinism:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            # Same folder name in both runs: stack traces in dynamo metadata hold no out paths.
            for d in (a, b):
                export_all(Path(d) / "torch", names)
            ra, rb = Path(a) / "torch", Path(b) / "torch"
            diff = [
                f.name
                for f in sorted(ra.iterdir())
                if f.name != "MANIFEST.json" and f.read_bytes() != (rb / f.name).read_bytes()
            ]
            print("identical" if not diff else f"DIFFERENT: {diff}")
            return 1 if diff else 0

    manifest = export_all(args.out, names)
    if args.only and (args.out / "MANIFEST.json").exists():
        old = json.loads((args.out / "MANIFEST.json").read_text())
        keep = [e for e in old["files"] if e["model"] not in names]
        manifest["files"] = sorted(keep + manifest["files"], key=lambda e: e["file"])
        manifest["models"] = {**old.get("models", {}), **manifest["models"]}
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest['files'])} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What each ONNX Runtime training runtime needs of the artifacts (``make-artifacts --target``).

* ``desktop``: the Python, C, C++ and C# APIs of onnxruntime-training 1.19.2; nothing more
  than the self-test checks.
* ``web``: onnxruntime-web 1.19.2, its WebAssembly training build, in a browser or Node.
  The checkpoint must be one file and the models must hold their weights (the JavaScript API
  takes bytes, one buffer per file), and the page trains whole models (no ``--split``): each
  refused with the reason. An op of the three models whose name is not in the wasm build is
  reported in a note (a string scan of the binary: it finds every op onnxfix's tests train
  there, but cannot prove an op absent). Problems the build has with forms onnxfix
  emits are fixed in the training graph for every target (1-D convs, SGD's flag shape: see
  :mod:`onnxfix.training.rewrites.convolution`, ``build._flag_as_declared``).
* ``mobile``: the Android/iOS packages and custom minimal builds. ``.ort`` files and, for a
  minimal build, ``required_operators.config``, the operator list ORT's
  ``build.sh --include_ops_by_config`` takes.

The wasm build's op list (:data:`WEB_OPS_FILE`) is read from the build itself by
``tools/ort_web_ops.py``: the op type names its kernel registry holds as strings. The linker
merges a string that ends another (``Conv`` inside ``QLinearConv``), so an op counts as
present when it ends one of the listed names.
"""

from __future__ import annotations

from pathlib import Path

from onnxfix.errors import ArtifactsError, param
from onnxfix.training.layout import REQUIRED_OPERATORS, ArtifactsLayout, Manifest

__all__ = ["TARGETS", "check_target", "web_ops", "WEB_OPS_FILE"]

TARGETS = ("desktop", "web", "mobile")
WEB_OPS_FILE = Path(__file__).resolve().parent / "ort_web_ops.txt"


def web_ops() -> tuple[str, ...]:
    """The names in onnxruntime-web 1.19.2's training build (see the module's docstring)."""
    lines = WEB_OPS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


# Ops ONNX Runtime resolves while loading a model, with no kernel to hold.
_RESOLVED_AT_LOAD = frozenset({"Constant"})


def _in_web_build(op: str, names: tuple[str, ...]) -> bool:
    return op in _RESOLVED_AT_LOAD or any(name.endswith(op) for name in names)


def check_target(artifacts: Path, manifest: Manifest, target: str) -> list[str]:
    """Refuse artifacts ``target``'s runtime cannot train, with the reason; notes to show."""
    if target not in TARGETS:
        raise ArtifactsError(f"{param('target')} {target!r} is not one of: {', '.join(TARGETS)}")
    layout = ArtifactsLayout(artifacts)
    if target == "web":
        return _check_web(layout, manifest)
    if target == "mobile":
        if not (artifacts / REQUIRED_OPERATORS).is_file():
            raise ArtifactsError(
                f"{param('target', 'target=')}mobile needs the .ort files and "
                f"{REQUIRED_OPERATORS}; add {param('ort_format', 'ort_format=True')}"
            )
    return []


def _check_web(layout: ArtifactsLayout, manifest: Manifest) -> list[str]:
    import onnx

    web = "onnxruntime-web cannot train these artifacts"
    if manifest.split is not None:
        raise ArtifactsError(
            f"{web}: {param('split', 'split=True')} artifacts need a second session for the "
            "prefix, which onnxfix's page and the JavaScript examples do not run; make them "
            f"without {param('split', 'split=True')}"
        )
    data = layout.checkpoint.with_name(layout.checkpoint.name + ".data")
    if data.exists():
        raise ArtifactsError(
            f"{web}: the checkpoint keeps its values in a second file ({data.name}), and "
            "onnxruntime-web loads one-file checkpoints only; the model is too large for a browser"
        )
    names = web_ops()
    missing: dict[str, str] = {}
    training_ops: set[str] = set()
    for path in (layout.training_model, layout.eval_model, layout.optimizer_model):
        model = onnx.load(str(path), load_external_data=False)
        if path == layout.training_model:
            training_ops = {n.op_type for n in model.graph.node}
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise ArtifactsError(
                    f"{web}: {path.name} keeps tensor {tensor.name!r} in external data, and "
                    "onnxruntime-web takes each model as one buffer"
                )
        for node in model.graph.node:
            if not _in_web_build(node.op_type, names):
                missing.setdefault(node.op_type, path.name)
    notes = [
        f"onnxruntime-web: {where} uses {op}, whose name is not among those of onnxruntime-web "
        "1.19.2's training build (tools/ort_web_ops.py reads them from the .wasm; a name the "
        "linker merged may hide): check that the page trains it before relying on it"
        for op, where in missing.items()
    ]
    node_only = sorted(training_ops & {"LSTMTraining", "LSTMGrad", "GRUTraining", "GRUGrad"})
    if node_only:
        notes.append(
            f"onnxruntime-web: the training graph has {', '.join(node_only)}; measured to crash or "
            "hang in Node.js 20 (they train in Chromium): train this model in a browser"
        )
    return notes

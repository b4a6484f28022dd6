"""``web``: a static folder that trains the artifacts in the browser (onnxruntime-web 1.19.2).

The folder holds everything the page needs, nothing fetched from elsewhere::

    index.html, onnxfix-web.js   the page (onnxfix/web/ in the package)
    site.json                    what the page needs to know (below)
    artifacts/                   training, eval and optimizer models and the checkpoint
    ort/                         onnxruntime-web's training bundle and its WebAssembly
    sample.npz                   the bundled data (with ``data``), in the model's dtypes

``site.json``: the inputs and target to feed, the loss and optimizer, the trainable
parameters in the order ``getContiguousParameters(true)`` returns them (the training graph's
parameter inputs) with their shapes, and the convs whose kernels the page draws: where each
one's values are (a trainable parameter, two channel parts, or values given inline for a
frozen or fixed one) and what onnxfix fixed in it.

The page's "Download trained parameters" writes an ``.npz`` of the trainable parameters by
name; ``onnxfix export ARTIFACTS --parameters FILE.npz`` turns it into the fine-tuned model.

Artifacts must suit the web runtime, as ``make-artifacts --target web`` checks
(:mod:`onnxfix.training.runtimes`): one checkpoint file, models without external data, every
op in the wasm build, no ``--split`` (the page trains whole models).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfix._version import __version__
from onnxfix.errors import ArtifactsError, param
from onnxfix.modelio.folders import recover_swap, replace_folder
from onnxfix.modelio.staging import private_dir
from onnxfix.modelio.targets import Read, Write, check_writes
from onnxfix.outputs import check_output, writing
from onnxfix.training.layout import (
    CHECKPOINT,
    EVAL_MODEL,
    OPTIMIZER_MODEL,
    TRAINING_MODEL,
    ArtifactsLayout,
    Manifest,
    is_artifact_file,
    load_manifest,
)

__all__ = ["SiteResult", "make_site", "ORT_WEB_VERSION", "find_ort_web"]

ORT_WEB_VERSION = "1.19.2"
# onnxruntime-web's files the training page loads (dist/ of the npm package).
ORT_WEB_FILES = (
    "ort.training.wasm.min.js",
    "ort-training-wasm-simd-threaded.wasm",
    "ort-training-wasm-simd-threaded.mjs",
)
PAGE_FILES = ("index.html", "onnxfix-web.js")
SITE_JSON = "site.json"
SAMPLE = "sample.npz"
# What a site folder holds (a folder with anything else is not replaced, even with force).
SITE_ENTRIES = (*PAGE_FILES, SITE_JSON, SAMPLE, "artifacts", "ort")
# Kernels drawn: every fixed one, and the others up to this many values, this many layers.
_DRAWN_VALUES = 1 << 16
_DRAWN_LAYERS = 12
_PAGE_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass(frozen=True)
class SiteResult:
    directory: Path
    ort_web: Path  # the onnxruntime-web package the files came from
    sample: int | None  # samples in sample.npz, None without one
    kernels: int  # conv layers the page draws
    notes: tuple[str, ...] = ()


def find_ort_web(given: str | os.PathLike | None) -> Path:
    """The onnxruntime-web 1.19.2 npm package folder: ``given``, else ``$ONNXFIX_ORT_WEB``,
    else ``node_modules/onnxruntime-web`` in the current folder."""
    candidates = (
        [Path(given)]
        if given is not None
        else [Path(os.environ["ONNXFIX_ORT_WEB"])]
        if os.environ.get("ONNXFIX_ORT_WEB")
        else [Path("node_modules") / "onnxruntime-web"]
    )
    folder = candidates[0]
    if (folder / "dist").is_dir() is False and folder.name == "dist":
        folder = folder.parent
    how = (
        f"install it with 'npm install onnxruntime-web@{ORT_WEB_VERSION}' and give "
        f"{param('ort_web', 'ort_web=')}node_modules/onnxruntime-web"
    )
    package = folder / "package.json"
    try:
        meta = json.loads(package.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactsError(
            f"no onnxruntime-web package at {str(folder)!r} (no readable package.json); {how}"
        ) from e
    version = meta.get("version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("name") != "onnxruntime-web":
        raise ArtifactsError(f"{str(folder)!r} is not the onnxruntime-web package; {how}")
    if version != ORT_WEB_VERSION:
        raise ArtifactsError(
            f"{str(folder)!r} holds onnxruntime-web {version}; the artifacts are made for "
            f"ONNX Runtime {ORT_WEB_VERSION}'s training format, so {how}"
        )
    missing = [f for f in ORT_WEB_FILES if not (folder / "dist" / f).is_file()]
    if missing:
        raise ArtifactsError(
            f"onnxruntime-web at {str(folder)!r} lacks dist/{missing[0]}; reinstall it: {how}"
        )
    return folder


def check_web_artifacts(artifacts: Path, manifest: Manifest) -> list[str]:
    """Refuse artifacts the page cannot train, saying why; notes to show (as --target web)."""
    from onnxfix.training.runtimes import check_target

    for path in (artifacts / TRAINING_MODEL, artifacts / EVAL_MODEL, artifacts / OPTIMIZER_MODEL):
        if not path.is_file():
            raise ArtifactsError(f"{str(artifacts)!r} lacks {path.name}; make the artifacts again")
    if not (artifacts / CHECKPOINT).is_file():
        raise ArtifactsError(f"{str(artifacts)!r} has no checkpoint file")
    return check_target(artifacts, manifest, "web")


def make_site(
    artifacts: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    ort_web: str | os.PathLike | None = None,
    force: bool = False,
) -> SiteResult:
    """Write the training page for ``artifacts`` into the folder ``out``, atomically."""
    artifacts, out = Path(artifacts), Path(out)
    manifest = load_manifest(artifacts)
    notes = check_web_artifacts(artifacts, manifest)
    package = find_ort_web(ort_web)
    dest = _check_destination(artifacts, out, data, force)
    layout = ArtifactsLayout(artifacts)
    with writing(f"the site folder {str(out)!r}"):
        staging = private_dir(dest).resolve()
    try:
        (staging / "artifacts").mkdir()
        for name in (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT):
            shutil.copyfile(artifacts / name, staging / "artifacts" / name)
        (staging / "ort").mkdir()
        for name in ORT_WEB_FILES:
            shutil.copyfile(package / "dist" / name, staging / "ort" / name)
        for name in PAGE_FILES:
            shutil.copyfile(_PAGE_DIR / name, staging / name)
        samples = _write_sample(data, manifest, staging / SAMPLE) if data is not None else None
        site = _site_json(layout, manifest, samples)
        (staging / SITE_JSON).write_text(json.dumps(site, indent=1) + "\n", encoding="utf-8")
        replace_folder(staging, dest, lambda: _check_replaceable(out, dest, force))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SiteResult(out, package, samples, len(site["kernels"]), tuple(notes))


def _check_destination(
    artifacts: Path, out: Path, data: str | os.PathLike | None, force: bool
) -> Path:
    check_output(out, what="output folder", folder=True)
    if out.exists() and not out.is_dir():
        raise ArtifactsError(f"{str(out)!r} exists and is not a folder; choose another -o")
    if not out.parent.is_dir():
        raise ArtifactsError(f"the parent folder of {str(out)!r} does not exist; create it first")
    dest = Path(os.path.realpath(out))
    recover_swap(dest)
    reads = [
        Read(artifacts / e.name, "the artifacts' file")
        for e in sorted(os.scandir(artifacts), key=lambda e: e.name)
        if is_artifact_file(e.name)
    ]
    if data is not None:
        reads.append(Read(Path(data), "the data file"))
    check_writes(reads, [Write(out, param("out", "out"), folder=True)])
    _check_replaceable(out, dest, force)
    return dest


def _check_replaceable(out: Path, dest: Path, force: bool) -> None:
    """A non-empty destination must be a site onnxfix wrote, and then needs ``force``."""
    try:
        names = sorted(os.listdir(dest))
    except FileNotFoundError:
        return
    if not names:
        return
    foreign = [n for n in names if n not in SITE_ENTRIES]
    if foreign or SITE_JSON not in names:
        why = f"it holds {foreign[0]!r}" if foreign else f"it has no {SITE_JSON}"
        raise ArtifactsError(
            f"{str(out)!r} is not a site folder onnxfix wrote: {why}. {param('out', 'out')} "
            f"must be a new or empty folder, or a site to replace with {param('force', 'force=True')}"
        )
    if not force:
        raise ArtifactsError(
            f"{str(out)!r} is not empty; add {param('force', 'force=True')} to replace it, or "
            f"choose another {param('out', 'folder')}"
        )


def _write_sample(data: str | os.PathLike, manifest: Manifest, path: Path) -> int:
    """The data the page offers, checked as ``train`` checks it and stored uncompressed in
    the model's dtypes; returns the number of samples."""
    from onnxfix.training.data import load_dataset

    arrays, count = load_dataset(data, manifest)
    named: dict[str, Any] = {spec.name: a for spec, a in zip(manifest.feeds, arrays)}
    with open(path, "wb") as f:
        np.savez(f, **named)
    return count


def _parameter_inputs(layout: ArtifactsLayout, manifest: Manifest) -> list[dict]:
    """The trainable parameters in the training graph's input order, with shapes."""
    import onnx

    graph = onnx.load(str(layout.training_model), load_external_data=False).graph
    trainable = set(manifest.trainable)
    out, offset = [], 0
    for value in graph.input:
        if value.name not in trainable:
            continue
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        size = int(np.prod(dims)) if dims else 1
        out.append({"name": value.name, "shape": dims, "offset": offset, "size": size})
        offset += size
    if len(out) != len(trainable):
        raise ArtifactsError(
            f"{TRAINING_MODEL} in {str(layout.root)!r} does not take every trainable parameter "
            "as an input; make the artifacts again"
        )
    return out


def _site_json(layout: ArtifactsLayout, manifest: Manifest, samples: int | None) -> dict:
    import onnxruntime

    from onnxfix.training.data import class_count

    target = manifest.target.to_json() if manifest.target is not None else None
    if target is not None and manifest.loss == "cross-entropy":
        target["classes"] = class_count(manifest)  # labels the page accepts: 0 to classes - 1

    return {
        "onnxfix_version": __version__,
        "ort_web_version": ORT_WEB_VERSION,
        "made_with_onnxruntime": onnxruntime.__version__,
        "source_model": manifest.source_model,
        "artifacts": {
            "training_model": f"artifacts/{TRAINING_MODEL}",
            "eval_model": f"artifacts/{EVAL_MODEL}",
            "optimizer_model": f"artifacts/{OPTIMIZER_MODEL}",
            "checkpoint": f"artifacts/{CHECKPOINT}",
        },
        "inputs": [s.to_json() for s in manifest.inputs],
        "target": target,
        "loss": manifest.loss,
        "optimizer": manifest.optimizer,
        "learning_rate": 0.001,  # ONNX Runtime's default; onnxruntime-web 1.19.2 cannot set it
        "parameters": _parameter_inputs(layout, manifest),
        "kernels": _kernels(layout, manifest),
        "sample": {"file": SAMPLE, "samples": samples} if samples is not None else None,
    }


def _kernels(layout: ArtifactsLayout, manifest: Manifest) -> list[dict]:
    """The convs the page draws, with where each one's values are."""
    import onnx

    from onnxfix._proto import find_initializer
    from onnxfix.kernels.layers import find_convs
    from onnxfix.modelio.modelfile import load_model

    mf = load_model(layout.inference_model)
    fixed = manifest.provenance
    trainable = set(manifest.trainable)
    drawn: list[dict] = []
    for conv in find_convs(mf.model, fixed=set(fixed)):
        name = conv.source.tensor or conv.weight
        record = fixed.get(name)
        found = find_initializer(mf.model, name)
        if found is None or conv.shape is None or found[1].data_type != onnx.TensorProto.FLOAT:
            continue
        size = int(np.prod(conv.shape))
        if record is None and (size > _DRAWN_VALUES or len(drawn) >= _DRAWN_LAYERS):
            continue
        entry: dict = {
            "layer": conv.display,
            "op": conv.op,
            "group": conv.group,
            "weight": name,
            "shape": list(conv.shape),
            "fixed": None,
            "param": name if name in trainable else None,
            "parts": None,
            "values_b64": None,
        }
        if record is not None:
            entry["fixed"] = {
                "kernel": record.kernel,
                "channels": list(record.fixed_channels) if record.fixed_channels else None,
            }
        parts = manifest.channel_parts.get(name)
        if parts is not None:
            entry["parts"] = {
                "fixed": parts.fixed_name,
                "train": parts.train_name if parts.train_name in trainable else None,
                "fixed_channels": list(parts.fixed),
            }
        if entry["param"] is None:  # frozen or fixed, or in parts: the values come along
            values = mf.read_array(found[1]).astype("<f4")
            entry["values_b64"] = base64.b64encode(values.tobytes()).decode("ascii")
        drawn.append(entry)
    return drawn

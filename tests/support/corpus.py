"""The corpus of real exported ONNX models that onnxfix is tested on.

Imported as ``tests.support.corpus`` (the repository root on ``sys.path``, as pytest puts it for
the ``tests`` package), by the tests and by ``tools/``. Needs no torch, and imports pytest only
when it has to skip.

Three sources, described in ``tests/data/README.md``:

- ``torch_models()``: small CNNs exported by ``tools/make_torch_models.py`` with both PyTorch
  exporters, checked in under ``tests/data/torch`` with a MANIFEST.json and reference I/O.
- ``rapidocr_model(kind)``: the PaddleOCR models (PP-OCR det/rec, mobile v2.0 cls) shipped in
  the ``rapidocr-onnxruntime`` wheel, fetched with pip into a per-user cache (the cls model is
  also checked in under ``tests/data/paddle``, so it needs no network).
- ``onnx_backend_models()``: conv models converted from PyTorch 0.3 and the caffe2-era
  ``light_*`` model-zoo architectures that ship inside the installed ``onnx`` package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.files import sha256
from tests.support.paths import DATA

DATA_DIR = DATA
TORCH_DIR = DATA_DIR / "torch"
PADDLE_DIR = DATA_DIR / "paddle"

# --------------------------------------------------------------------------- rapidocr / Paddle

RAPIDOCR_PACKAGE = "rapidocr-onnxruntime"
# Verified: the 1.4.4 wheel (py3-none-any, 14.9 MB) ships exactly these three models; the
# sha256 values are those in the wheel's RECORD (checked against the extracted bytes).
RAPIDOCR_VERSION = "1.4.4"
RAPIDOCR_MODELS: dict[str, tuple[str, str, int]] = {
    "cls": (
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        585532,
    ),
    "det": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        4745517,
    ),
    "rec": (
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        10857958,
    ),
}
# The cls model, checked in (Apache-2.0, see tests/data/paddle/LICENSE).
PADDLE_CLS_MODEL = PADDLE_DIR / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def cache_root() -> Path:
    """``$ONNXFIX_TEST_CACHE`` or ``~/.cache/onnxfix-tests`` (XDG_CACHE_HOME respected)."""
    env = os.environ.get("ONNXFIX_TEST_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "onnxfix-tests"


def rapidocr_cache_dir() -> Path:
    return cache_root() / "rapidocr" / RAPIDOCR_VERSION


def _skip(reason: str) -> None:
    import pytest

    pytest.skip(reason)


def _download_rapidocr_wheel(dest: Path) -> Path:
    """``pip download`` the pinned wheel into ``dest``; skip the test if that fails."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "30",
        f"{RAPIDOCR_PACKAGE}=={RAPIDOCR_VERSION}",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _skip(f"rapidocr-onnxruntime wheel not reachable (offline?): {exc}")
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        _skip(f"rapidocr-onnxruntime wheel not reachable (offline?): {tail[-300:]}")
    wheels = sorted(dest.glob("rapidocr_onnxruntime-*.whl"))
    if not wheels:
        _skip("rapidocr-onnxruntime wheel not reachable (offline?): pip saved no wheel")
    return wheels[0]


def _extract_models(wheel: Path, target_dir: Path) -> None:
    """Extract every pinned model from the wheel zip into ``target_dir``, checking sha256."""
    target_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for member, sha, size in RAPIDOCR_MODELS.values():
            final = target_dir / Path(member).name
            if final.exists() and sha256(final) == sha:
                continue
            fd, tmp_name = tempfile.mkstemp(dir=target_dir, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                    shutil.copyfileobj(src, out)
                got = sha256(Path(tmp_name))
                if got != sha or Path(tmp_name).stat().st_size != size:
                    raise RuntimeError(f"{member} in {wheel.name} has sha256 {got}, expected {sha}")
                os.chmod(tmp_name, 0o644)  # mkstemp made it 0600
                os.replace(tmp_name, final)  # atomic: parallel test workers are safe
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)


def rapidocr_model(kind: str) -> Path:
    """Path of rapidocr-onnxruntime's PaddleOCR model ``kind`` ("cls", "det" or "rec").

    Cached under ``~/.cache/onnxfix-tests/rapidocr/<version>/``; on a cache miss the pinned
    wheel is fetched with ``pip download`` and the models are taken out of the zip (rapidocr is
    never installed or imported). The cls model is also found in ``tests/data/paddle`` and
    needs no download. Calls ``pytest.skip`` when the wheel cannot be downloaded.
    """
    if kind not in RAPIDOCR_MODELS:
        raise ValueError(f"kind must be one of {sorted(RAPIDOCR_MODELS)}, not {kind!r}")
    member, sha, _size = RAPIDOCR_MODELS[kind]
    cached = rapidocr_cache_dir() / Path(member).name
    if cached.exists() and sha256(cached) == sha:
        return cached
    if kind == "cls" and PADDLE_CLS_MODEL.exists() and sha256(PADDLE_CLS_MODEL) == sha:
        return PADDLE_CLS_MODEL
    with tempfile.TemporaryDirectory(prefix="onnxfix-rapidocr-") as tmp:
        wheel = _download_rapidocr_wheel(Path(tmp))
        _extract_models(wheel, rapidocr_cache_dir())
    return cached


# --------------------------------------------------------------------------- onnx backend data


def onnx_backend_data_dir() -> Path:
    """``onnx/backend/test/data`` of the installed onnx package."""
    import onnx

    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"


def onnx_backend_models(
    groups: tuple[str, ...] = ("pytorch-converted", "pytorch-operator", "light"),
) -> list[Path]:
    """Model files of the onnx package's backend test data that exercise convolutions.

    - ``pytorch-converted``: ``test_Conv*/model.onnx`` (Conv1d/2d/3d incl. depthwise, grouped,
      dilated, strided, no-bias) and ``test_ConvTranspose*/model.onnx``; exported by PyTorch
      0.3, IR 3, opset 6, weights are initializers *also listed as graph inputs*. Each
      directory has ``test_data_set_0/{input,output}_0.pb`` (see ``onnx_backend_test_data``).
    - ``pytorch-operator``: ``test_operator_conv`` and ``test_operator_convtranspose``.
    - ``light``: ``light_*.onnx``, the caffe2-era model-zoo architectures (AlexNet, DenseNet121,
      Inception v1/v2, ResNet50, ShuffleNet, SqueezeNet, VGG19, ZFNet512) whose weights are
      ``ConstantOfShape`` nodes (constant fill values) fed by int64 shape initializers.

    Returns sorted paths; a group absent from the installed onnx version contributes nothing.
    """
    root = onnx_backend_data_dir()
    found: list[Path] = []
    if "pytorch-converted" in groups:
        base = root / "pytorch-converted"
        for pattern in ("test_Conv*", "test_ConvTranspose*"):
            found += [d / "model.onnx" for d in base.glob(pattern)]
    if "pytorch-operator" in groups:
        base = root / "pytorch-operator"
        for name in ("test_operator_conv", "test_operator_convtranspose"):
            found.append(base / name / "model.onnx")
    if "light" in groups:
        found += list((root / "light").glob("light_*.onnx"))
    return sorted({p for p in found if p.is_file()})


def onnx_backend_test_data(model_path: Path) -> tuple[list[Any], list[Any]]:
    """``(inputs, outputs)`` as numpy arrays from ``test_data_set_0`` beside ``model.onnx``.

    For a ``light_*.onnx`` model only the output exists (``light_*_output_0.pb``); the inputs
    list is then empty.
    """
    import onnx
    from onnx import numpy_helper

    def load(files: list[Path]) -> list[Any]:
        arrays = []
        for f in files:
            t = onnx.TensorProto()
            t.ParseFromString(f.read_bytes())
            arrays.append(numpy_helper.to_array(t))
        return arrays

    if model_path.name == "model.onnx":
        ds = model_path.parent / "test_data_set_0"
        return load(sorted(ds.glob("input_*.pb"))), load(sorted(ds.glob("output_*.pb")))
    outs = sorted(model_path.parent.glob(f"{model_path.stem}_output_*.pb"))
    return [], load(outs)


# --------------------------------------------------------------------------- exported torch


@dataclass(frozen=True)
class TorchModel:
    """One exported file of ``tests/data/torch`` with its MANIFEST entry."""

    name: str  # model name, e.g. "cnn_bn"
    exporter: str  # "torchscript" or "dynamo"
    path: Path  # the .onnx file
    io_path: Path  # NAME.io.npz with float32 "input" and "output"
    manifest: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.name}.{self.exporter}"

    @property
    def data_paths(self) -> list[Path]:
        """External data files next to the .onnx (empty for the TorchScript exports)."""
        return [self.path.parent / f for f in self.manifest.get("external_data_files", [])]

    def files(self) -> list[Path]:
        """Everything needed to copy the model elsewhere: the .onnx plus its data files."""
        return [self.path, *self.data_paths]


def torch_manifest() -> dict[str, Any]:
    return json.loads((TORCH_DIR / "MANIFEST.json").read_text(encoding="utf-8"))


def torch_models(
    names: tuple[str, ...] | None = None, exporters: tuple[str, ...] | None = None
) -> list[TorchModel]:
    """The exported PyTorch models with their MANIFEST entries, optionally filtered."""
    out = []
    for entry in torch_manifest()["files"]:
        if names is not None and entry["model"] not in names:
            continue
        if exporters is not None and entry["exporter"] not in exporters:
            continue
        out.append(
            TorchModel(
                name=entry["model"],
                exporter=entry["exporter"],
                path=TORCH_DIR / entry["file"],
                io_path=TORCH_DIR / entry["io_file"],
                manifest=entry,
            )
        )
    return out

"""The fixed-tensor record and the manifest: typed in memory, JSON on disk, and files written by
onnxfix 0.1.0 (tests/data/v0.1.0, made by `set-kernel samples/edge_cnn.onnx --layer edges
--kernel sobel-x --bias bias.npy` and `make-artifacts --loss cross-entropy` at 5587271) still
read, verify, train and export."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfix import ProvenanceError, set_kernel, verify
from onnxfix.provenance import PROVENANCE_KEY, FixedTensor, parse_provenance, read_provenance
from onnxfix.training.layout import Manifest, load_manifest
from tests.support.factories import save, simple_cnn
from tests.support.paths import DATA, SAMPLES

V010 = DATA / "v0.1.0"


def _with_bias(model: Path, out: Path, bias: np.ndarray) -> Path:
    """``model`` with conv1's bias replaced by ``bias`` (its record left as it was)."""
    proto = onnx.load(str(model))
    for t in proto.graph.initializer:
        if t.name == "conv1.bias":
            t.CopyFrom(onnx.numpy_helper.from_array(bias.astype(np.float32), "conv1.bias"))
    onnx.save(proto, str(out))
    return out


def test_a_changed_bias_is_reported_with_its_own_difference(tmp_path, run):
    """The bias record is the bias's own: a change in it is reported as CHANGED with its largest
    difference (0.1.0 gave it the weight's values, and verify died reshaping 216 into (8,))."""
    bias = np.arange(8, dtype=np.float32) * 0.25
    np.save(tmp_path / "b.npy", bias)
    src = save(simple_cnn(), tmp_path / "m.onnx")
    fixed = tmp_path / "fixed.onnx"
    set_kernel(src, fixed, layers=["conv1"], kernel="sobel-x", bias=str(tmp_path / "b.npy"))
    record = read_provenance(onnx.load(str(fixed)))
    assert np.array_equal(record["conv1.bias"].values(), bias)
    assert record["conv1.weight"].values().shape == (8, 3, 3, 3)

    moved = bias.copy()
    moved[3] += 0.5
    changed = _with_bias(fixed, tmp_path / "changed.onnx", moved)
    report = verify(changed)
    assert [(c.name, c.ok, c.max_abs_diff) for c in report.checks] == [
        ("conv1.bias", False, 0.5),
        ("conv1.weight", True, 0.0),
    ]
    r = run("verify", changed)
    assert r.exit_code == 1
    assert r.stdout == (
        "CHANGED  conv1.bias (layer conv1): largest absolute difference 0.5\n"
        "ok       conv1.weight (layer conv1)\n"
    )


def test_a_0_1_0_model_verifies_and_a_changed_bias_is_reported(tmp_path, run):
    """0.1.0's bias record holds the weight's 36 values: they are dropped when read, so a
    changed bias is CHANGED without a difference, never a crash."""
    fixed = tmp_path / "fixed.onnx"
    shutil.copy(V010 / "fixed.onnx", fixed)
    raw = json.loads(
        next(p.value for p in onnx.load(str(fixed)).metadata_props if p.key == PROVENANCE_KEY)
    )
    assert len(base64.b64decode(raw["edges.bias"]["values_b64"])) == 36 * 4  # the old bug
    record = read_provenance(onnx.load(str(fixed)))
    assert record["edges.bias"].values_b64 is None
    assert record["edges.weight"].values().shape == (4, 1, 3, 3)
    r = run("verify", fixed)
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith("all 2 fixed kernels match their record\n")

    proto = onnx.load(str(fixed))
    for t in proto.graph.initializer:
        if t.name == "edges.bias":
            t.CopyFrom(onnx.numpy_helper.from_array(np.zeros(4, np.float32), "edges.bias"))
    onnx.save(proto, str(tmp_path / "changed.onnx"))
    r = run("verify", tmp_path / "changed.onnx")
    assert r.exit_code == 1
    assert r.stdout.startswith("CHANGED  edges.bias (layer /edges/Conv): values differ\n")
    assert r.stderr == "Error: 1 of 2 fixed kernels differ from their record: edges.bias\n"


def test_0_1_0_artifacts_load_train_export_and_verify(tmp_path, run):
    art = tmp_path / "art"
    shutil.copytree(V010 / "art", art)
    written = json.loads((art / "onnxfix.json").read_text())
    manifest = load_manifest(art)
    assert manifest.frozen == ("edges.weight", "edges.bias")
    assert manifest.target is not None and manifest.target.name == "labels"
    # What this version writes for it: the same, less the bias's stale values.
    again = manifest.to_json()
    del written["provenance"]["edges.bias"]["values_b64"]
    assert again == written
    r = run("train", art, "--data", SAMPLES / "edges_train.npz", "--epochs", "1", "--lr", "0.01")
    assert r.exit_code == 0, r.output
    assert "fixed kernels unchanged: 2 checked" in r.stdout
    r = run("export", art, "-o", tmp_path / "fine.onnx")
    assert r.exit_code == 0, r.output
    r = run("verify", tmp_path / "fine.onnx")
    assert r.exit_code == 0 and r.stdout.endswith("all 2 fixed kernels match their record\n")
    r = run("verify", art)
    assert r.exit_code == 0 and r.stdout.endswith("all 2 fixed kernels match their record\n")


def test_records_written_now_read_back_equal(tmp_path):
    src = save(simple_cnn(), tmp_path / "m.onnx")
    set_kernel(src, tmp_path / "f.onnx", layers=["conv1"], kernel="sobel-x", bias="zero")
    from onnxfix import make_artifacts

    result = make_artifacts(tmp_path / "f.onnx", tmp_path / "art")
    assert load_manifest(tmp_path / "art") == result.manifest
    text = (tmp_path / "art" / "onnxfix.json").read_text()
    assert json.dumps(result.manifest.to_json(), indent=2) + "\n" == text
    assert Manifest.from_json(json.loads(text), source="x") == result.manifest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1", "the 'onnxfix.fixed_kernels' record is not valid JSON (Expecting ',' delimiter)"),
        ("[]", "the 'onnxfix.fixed_kernels' record must map tensor names to objects"),
        ('{"w": 3}', "the 'onnxfix.fixed_kernels' record of 'w' is not an object"),
        ('{"w": {"sha256": "ab"}}', "record of 'w' has no 'sha256' of 64 hex digits"),
        (
            '{"w": {"sha256": "' + "a" * 64 + '", "dtype": "object"}}',
            "record of 'w' has dtype 'object', not a numeric dtype name such as 'float32'",
        ),
        (
            '{"w": {"sha256": "' + "a" * 64 + '", "shape": [1099511627776]}}',
            "record of 'w' has shape [1099511627776], not a list of sizes",
        ),
    ],
)
def test_malformed_records_are_refused_by_name(text, message):
    with pytest.raises(ProvenanceError) as e:
        parse_provenance(text, source="m.onnx")
    assert str(e.value).startswith("m.onnx: ")
    assert message in str(e.value)
    assert str(e.value).endswith("re-run set-kernel on the original model")


def test_record_values_are_little_endian_and_absent_past_the_limit():
    small = np.arange(6, dtype=">f4").reshape(2, 3)
    record = FixedTensor.of(small, layer="c", op="Conv", role="weight", kernel="k")
    assert record.values().dtype == np.dtype("<f4")
    assert np.array_equal(record.values(), small)
    big = np.zeros((257, 256), np.float32)  # 263,168 bytes > 256 KiB
    assert FixedTensor.of(big, layer="c", op="Conv", role="weight", kernel="k").values() is None

"""make-artifacts --target: what each runtime needs, checked before anything is written; the
SGD optimizer model's flag; export --parameters (the web page's download)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfix import ArtifactsError, export_model, make_artifacts, set_kernel, verify
from onnxfix.training.runtimes import _in_web_build, check_target, web_ops
from tests.support.factories import frozen_front_cnn, save
from tests.support.paths import SAMPLES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("targets")
    out = tmp / "fixed.onnx"
    set_kernel(SAMPLES / "edge_cnn.onnx", out, layers="edges", kernel="sobel-x")
    return out


@pytest.fixture(scope="module")
def web_artifacts(fixed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web") / "art"
    result = make_artifacts(fixed, out, loss="cross-entropy", target="web", self_test=False)
    assert result.target == "web" and result.target_notes == ()
    return out


def test_the_web_op_list_finds_every_op_of_the_artifacts(web_artifacts):
    names = web_ops()
    ops = set()
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        ops |= {n.op_type for n in onnx.load(str(web_artifacts / name)).graph.node}
    assert {"ConvGrad", "AdamWOptimizer", "InPlaceAccumulatorV2"} <= ops
    assert [op for op in sorted(ops) if not _in_web_build(op, names)] == []
    assert not _in_web_build("NoSuchOp", names)


def test_an_op_the_web_build_lacks_is_named_in_a_note(web_artifacts, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(web_artifacts, copy)
    model = onnx.load(str(copy / "eval_model.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, str(copy / "eval_model.onnx"))
    from onnxfix.training.layout import load_manifest

    notes = check_target(copy, load_manifest(copy), "web")
    assert notes == [
        "onnxruntime-web: eval_model.onnx uses NoSuchOp, whose name is not among those of "
        "onnxruntime-web 1.19.2's training build (tools/ort_web_ops.py reads them from the "
        ".wasm; a name the linker merged may hide): check that the page trains it before "
        "relying on it"
    ]


def test_web_refuses_split_artifacts_and_writes_nothing(tmp_path, run):
    model = frozen_front_cnn()
    src = save(model, tmp_path / "m.onnx")
    fixed = tmp_path / "f.onnx"
    set_kernel(src, fixed, layers="conv1", kernel="sobel-x", bias="zero")
    r = run(
        "make-artifacts", fixed, "-o", tmp_path / "art", "--split", "--freeze", "conv2",
        "--target", "web", "--no-self-test",
    )  # fmt: skip
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: onnxruntime-web cannot train these artifacts: --split artifacts need a second "
        "session for the prefix, which onnxfix's page and the JavaScript examples do not run; "
        "make them without --split\n"
    )
    assert not (tmp_path / "art").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_web_refuses_a_checkpoint_in_two_files(web_artifacts, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(web_artifacts, copy)
    (copy / "checkpoint.data").write_bytes(b"\0" * 8)
    from onnxfix.training.layout import load_manifest

    with pytest.raises(ArtifactsError) as e:
        check_target(copy, load_manifest(copy), "web")
    assert "the checkpoint keeps its values in a second file (checkpoint.data)" in str(e.value)


@pytest.mark.slow  # the fast run stays under a minute
def test_mobile_writes_ort_files_and_one_operator_config(fixed, tmp_path):
    result = make_artifacts(
        fixed, tmp_path / "art", loss="cross-entropy", target="mobile", self_test=False
    )
    names = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert names == [
        "checkpoint",
        "eval_model.onnx",
        "eval_model.ort",
        "inference_model.onnx",
        "onnxfix.json",
        "optimizer_model.onnx",
        "optimizer_model.ort",
        "required_operators.config",
        "training_model.onnx",
        "training_model.ort",
    ]
    config = (tmp_path / "art" / "required_operators.config").read_text().splitlines()
    ops = {
        (line.split(";")[0], op)
        for line in config
        if not line.startswith("#")
        for op in line.split(";")[2].split(",")
    }
    assert {("com.microsoft", "AdamWOptimizer"), ("com.microsoft", "ConvGrad")} <= ops
    assert ("ai.onnx", "Gemm") in ops
    assert result.target == "mobile"


def test_sgd_flag_is_declared_as_what_its_op_makes(fixed, tmp_path):
    """onnxblock declares SGD's update_completed [1] while SGDOptimizerV2 infers a scalar (the
    wasm build refuses that model); a Reshape to [1] makes all three agree."""
    make_artifacts(fixed, tmp_path / "art", loss="cross-entropy", optimizer="sgd", self_test=False)
    graph = onnx.load(str(tmp_path / "art" / "optimizer_model.onnx")).graph
    (output,) = graph.output
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1]
    producer = next(n for n in graph.node if output.name in n.output)
    assert producer.op_type == "Reshape"
    sgd = next(n for n in graph.node if n.op_type == "SGDOptimizerV2")
    assert producer.input[0] == sgd.output[0]


@pytest.fixture(scope="module")
def trained_parameters(web_artifacts, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """What the web page would download: every trainable parameter by name, moved."""
    from onnxfix.training.checkpoint import read_checkpoint
    from onnxfix.training.layout import load_manifest

    manifest = load_manifest(web_artifacts)
    stored = read_checkpoint(web_artifacts / "checkpoint")
    arrays = {}
    for name in manifest.trainable:
        p = stored.parameters[name]
        arrays[name] = np.frombuffer(p.read(), "<f4").reshape(p.dims) + np.float32(0.125)
    path = tmp_path_factory.mktemp("download") / "trained_parameters.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_export_takes_the_downloaded_parameters(web_artifacts, trained_parameters, tmp_path, run):
    path, arrays = trained_parameters
    out = tmp_path / "finetuned.onnx"
    r = run("export", web_artifacts, "-o", out, "--parameters", path)
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        f"wrote {out} (outputs: logits; 6 parameters from the checkpoint and {path}; "
        "1 fixed kernels intact)\n"
    )
    exported = {
        t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
    }
    for name, values in arrays.items():
        assert np.array_equal(exported[name], values), name
    assert verify(out).ok


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", "lacks trainable parameter 'head.bias'; is it from these artifacts?"),
        (
            "reshape",
            "parameter 'head.bias' in the parameters file has shape [1, 2], the model's is [2]",
        ),
        ("nan", "holds nan in parameter 'head.bias' at [1]: the training that saved it diverged"),
        ("float64", "parameter 'head.bias' is float64, not float32"),
    ],
)
def test_export_refuses_parameters_that_do_not_fit(
    web_artifacts, trained_parameters, tmp_path, change, message
):
    _, arrays = trained_parameters
    arrays = dict(arrays)
    if change == "drop":
        del arrays["head.bias"]
    elif change == "reshape":
        arrays["head.bias"] = arrays["head.bias"].reshape(1, 2)
    elif change == "nan":
        arrays["head.bias"] = np.array([0, np.nan], np.float32)
    else:
        arrays["head.bias"] = arrays["head.bias"].astype(np.float64)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ArtifactsError) as e:
        export_model(web_artifacts, tmp_path / "out.onnx", parameters=bad)
    assert message in str(e.value)
    assert not (tmp_path / "out.onnx").exists()

"""onnxfix web's folder: what it holds, and its refusals (the page itself: tests/web)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxfix import ArtifactsError, make_artifacts, set_kernel
from onnxfix.commands.web import ORT_WEB_FILES, make_site
from tests.support.paths import SAMPLES


def _ort_web(folder: Path, version: str = "1.19.2") -> Path:
    """A stand-in for the npm package: its package.json and the files the site copies."""
    (folder / "dist").mkdir(parents=True)
    (folder / "package.json").write_text(
        json.dumps({"name": "onnxruntime-web", "version": version})
    )
    for name in ORT_WEB_FILES:
        (folder / "dist" / name).write_bytes(name.encode())
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("site")
    set_kernel(SAMPLES / "edge_cnn.onnx", tmp / "f.onnx", layers="edges", kernel="sobel-x")
    make_artifacts(tmp / "f.onnx", tmp / "art", loss="cross-entropy", self_test=False)
    return tmp / "art"


def test_the_site_holds_the_page_the_artifacts_and_onnxruntime_web(artifacts, tmp_path, run):
    ort = _ort_web(tmp_path / "ort-web")
    site = tmp_path / "site"
    r = run("web", artifacts, "-o", site, "--data", SAMPLES / "edges_train.npz", "--ort-web", ort)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        f"wrote {site} (onnxruntime-web from {ort}, sample data: 256 samples)",
        f"serve it and open the page: python -m http.server --bind 127.0.0.1 --directory {site} "
        "8000, then http://127.0.0.1:8000/",
    ]
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == sorted(
        [
            "index.html",
            "onnxfix-web.js",
            "sample.npz",
            "site.json",
            *(
                f"artifacts/{n}"
                for n in (
                    "checkpoint",
                    "eval_model.onnx",
                    "optimizer_model.onnx",
                    "training_model.onnx",
                )
            ),
            *(f"ort/{n}" for n in ORT_WEB_FILES),
        ]
    )
    assert (site / "artifacts" / "checkpoint").read_bytes() == (
        artifacts / "checkpoint"
    ).read_bytes()
    info = json.loads((site / "site.json").read_text())
    assert [p["name"] for p in info["parameters"]] == [
        "edges.bias", "features.1.weight", "features.1.bias", "head.weight", "head.bias",
    ]  # fmt: skip
    assert info["target"] == {"name": "labels", "shape": ["batch"], "dtype": "int64", "classes": 2}
    assert info["kernels"][0]["fixed"] == {"kernel": "sobel-x", "channels": None}
    assert info["sample"] == {"file": "sample.npz", "samples": 256}
    # Again: refused without --force, replaced with it.
    r = run("web", artifacts, "-o", site, "--ort-web", ort)
    assert r.exit_code == 1
    assert (
        r.stderr
        == f"Error: {str(site)!r} is not empty; add --force to replace it, or choose another -o\n"
    )
    assert run("web", artifacts, "-o", site, "--ort-web", ort, "--force").exit_code == 0
    assert not (site / "sample.npz").exists()


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            "1.20.0",
            "holds onnxruntime-web 1.20.0; the artifacts are made for ONNX Runtime 1.19.2's training format",
        ),
        (None, "no onnxruntime-web package at"),
    ],
)
def test_another_onnxruntime_web_is_refused(artifacts, tmp_path, version, message):
    ort = _ort_web(tmp_path / "o", version) if version else tmp_path / "nothing"
    with pytest.raises(ArtifactsError) as e:
        make_site(artifacts, tmp_path / "site", ort_web=ort)
    assert message in str(e.value)
    assert "npm install onnxruntime-web@1.19.2" in str(e.value)
    assert not (tmp_path / "site").exists()


def test_a_folder_that_is_not_a_site_is_never_replaced(artifacts, tmp_path):
    ort = _ort_web(tmp_path / "o")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactsError) as e:
        make_site(artifacts, mine, ort_web=ort, force=True)
    assert str(e.value).startswith(
        f"{str(mine)!r} is not a site folder onnxfix wrote: it holds 'notes.txt'"
    )
    assert (mine / "notes.txt").read_text() == "keep me"


def test_the_site_cannot_be_written_into_the_artifacts(artifacts, tmp_path, run):
    ort = _ort_web(tmp_path / "o")
    r = run("web", artifacts, "-o", artifacts / "checkpoint", "--ort-web", ort)
    assert r.exit_code == 1
    assert "checkpoint" in r.stderr and r.stderr.startswith("Error: ")
    assert (artifacts / "checkpoint").is_file()

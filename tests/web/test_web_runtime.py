"""The web page's training, for real: onnxruntime-web 1.19.2 in Node and in headless Chromium,
running the page's own onnxfix-web.js, against ONNX Runtime's Python training API.

Each case builds artifacts and a site (``onnxfix web``) in a temporary folder and trains them in
Python (CheckpointState, Module, Optimizer; the learning rate left at its default, as the page
must), then in Node (web/node_train.js) and in the page (web/drive_page.js): the same batches in
the same order must give the same losses, every trainable parameter must move, and the page's
download must export (``onnxfix export --parameters``) with the fixed kernels bit-identical.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnxfix.channels import rows_view
from tests.support.png import read_png
from tests.web.support import (
    PAGE_JS,
    WEB,
    as_parameters,
    check_export,
    check_training,
    run_browser,
    run_node,
)

pytestmark = pytest.mark.web

HERE = Path(__file__).resolve().parent
ALL_CASES = ["edge-adamw", "edge-sgd", "stem-parts", "conv1d"]


# -- the library's pure pieces, in Node --------------------------------------------------------


def _npz_member(array: np.ndarray, version: tuple[int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _library_files(folder: Path) -> tuple[dict, dict]:
    """Files for tests/web/lib_check.js, and what it must make of them."""
    rng = np.random.default_rng(3)
    typed = {
        "f4": rng.normal(size=(2, 3)).astype("<f4"),
        "f8": rng.normal(size=(4,)).astype("<f8"),
        "i8": np.array([[-(2**40), 0, 7]], "<i8"),
        "i4": np.array([-5, 0, 9], "<i4"),
        "u1": np.array([0, 200, 255], np.uint8),
        "b1": np.array([True, False, True]),
        "scalar": np.float32(2.5),
    }
    np.savez(folder / "stored.npz", **typed)
    np.savez_compressed(folder / "compressed.npz", **typed)
    big = rng.normal(size=(3, 70000)).astype(np.float32)  # deflated in several blocks
    np.savez_compressed(folder / "big.npz", big=big)
    _zip(folder / "v2.npz", {"a.npy": _npz_member(typed["f4"], (2, 0))})
    _zip(folder / "v3.npz", {"a.npy": _npz_member(typed["i8"], (3, 0))})
    np.savez(folder / "fortran.npz", image=np.asfortranarray(rng.normal(size=(3, 4))))
    np.savez(folder / "objects.npz", things=np.array([1, "x"], dtype=object))
    np.savez(folder / "bigendian.npz", a=np.arange(3, dtype=">f4"))
    np.savez(folder / "structured.npz", s=np.zeros(2, dtype=[("a", "<f4")]))
    np.savez(folder / "half.npz", h=np.zeros(2, dtype=np.float16))
    truncated = (folder / "stored.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(truncated[: len(truncated) // 2])

    site = {
        "inputs": [{"name": "x", "shape": ["batch", 1, 2, 2], "dtype": "float32"}],
        "target": {"name": "labels", "shape": ["batch"], "dtype": "int64"},
        "loss": "cross-entropy",
    }
    # site.json may state the classes (target.classes): a label beyond them is refused too.
    classes_site = {**site, "target": {**site["target"], "classes": 4}}
    x = rng.normal(size=(5, 1, 2, 2))  # float64: cast to float32
    prepare = {
        "labels_i4.npz": dict(x=x, labels=np.array([0, 1, 2, 3, 4], np.int32)),
        "labels_u1.npz": dict(x=x, labels=np.array([0, 1, 2, 3, 4], np.uint8)),
        "labels_b1.npz": dict(x=x, labels=np.array([0, 1, 1, 0, 1], bool)),
        "labels_f8.npz": dict(x=x, labels=np.array([0.0, 1, 2, 3, 4])),
        "labels_fraction.npz": dict(x=x, labels=np.array([0.0, 1.5, 2, 3, 4])),
        "labels_negative.npz": dict(x=x, labels=np.array([0, 1, -2, 3, 4], np.int64)),
        "x_nan.npz": dict(x=np.where(np.arange(20).reshape(5, 1, 2, 2) == 9, np.nan, x), labels=np.zeros(5, np.int64)),
        "x_shape.npz": dict(x=rng.normal(size=(5, 1, 3, 2)), labels=np.zeros(5, np.int64)),
        "no_labels.npz": dict(x=x),
        "counts.npz": dict(x=x, labels=np.zeros(4, np.int64)),
    }  # fmt: skip
    for name, arrays in prepare.items():
        np.savez(folder / name, **arrays)

    weights = {
        "conv": rng.normal(size=(6, 2, 3, 3)).astype(np.float32),
        "convt": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),  # I=4, O/g=3, group 2: O=6
        "conv1d": rng.normal(size=(5, 2, 3)).astype(np.float32),
        "conv3d": rng.normal(size=(2, 1, 3, 3, 3)).astype(np.float32),
    }
    rows = [
        {"values": weights["conv"].ravel().tolist(), "shape": [6, 2, 3, 3], "op": "Conv", "group": 1},
        {"values": weights["convt"].ravel().tolist(), "shape": [4, 3, 3, 3], "op": "ConvTranspose", "group": 2},
        {"values": weights["convt"].ravel().tolist(), "shape": [4, 3, 3, 3], "op": "ConvTranspose", "group": 1},
    ]  # fmt: skip

    def b64(a: np.ndarray) -> str:
        return base64.b64encode(a.astype("<f4").tobytes()).decode()

    convt_rows = rows_view(weights["convt"], op="ConvTranspose", role="weight", group=2)
    train_rows = rng.normal(size=(4, *convt_rows.shape[1:])).astype(np.float32)
    kernels = [
        {  # parts of a ConvTranspose: channels 1 and 4 fixed, the rest from the train part
            "entry": {
                "layer": "up", "op": "ConvTranspose", "group": 2, "weight": "w", "shape": [4, 3, 3, 3],
                "fixed": {"kernel": "box", "channels": [1, 4]}, "param": None,
                "parts": {"fixed": "w.fixed", "train": "w.train", "fixed_channels": [1, 4]},
                "values_b64": b64(weights["convt"]),
            },
            "parameters": {"w.train": train_rows.ravel().tolist()},
        },
        {  # a trained 1-D conv: strips
            "entry": {
                "layer": "c", "op": "Conv", "group": 1, "weight": "c", "shape": [5, 2, 3],
                "fixed": None, "param": "c", "parts": None, "values_b64": None,
            },
            "parameters": {"c": weights["conv1d"].ravel().tolist()},
        },
        {  # a whole fixed 3-D conv: the middle slice
            "entry": {
                "layer": "v", "op": "Conv", "group": 1, "weight": "v", "shape": [2, 1, 3, 3, 3],
                "fixed": {"kernel": "k", "channels": None}, "param": None, "parts": None,
                "values_b64": b64(weights["conv3d"]),
            },
            "parameters": {},
        },
    ]  # fmt: skip
    written = {
        "conv.weight": {"values": weights["conv"].ravel().tolist(), "shape": [6, 2, 3, 3]},
        "layer/1.bias": {"values": [1.5, -2.25, 3e-8], "shape": [3]},
        "ünï.scale": {"values": [0.1], "shape": []},
    }
    cases = {
        "read": [
            "stored.npz", "compressed.npz", "big.npz", "v2.npz", "v3.npz", "fortran.npz",
            "objects.npz", "bigendian.npz", "structured.npz", "half.npz", "truncated.npz",
        ],
        "prepare": [{"file": name, "site": site, "batch": 2} for name in prepare]
        + [{"file": "labels_i4.npz", "site": classes_site, "batch": 2}],
        "rows": rows,
        "kernels": kernels,
        "write": {"file": "written.npz", "arrays": written},
    }  # fmt: skip
    expected = {
        "typed": typed, "big": big, "prepare": prepare, "weights": weights,
        "convt_rows": convt_rows, "train_rows": train_rows, "written": written,
    }  # fmt: skip
    (folder / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
    return cases, expected


def _check_library(out: dict, expected: dict) -> None:
    typed = expected["typed"]
    kinds = {"f4": "float32", "f8": "float64", "i8": "int64", "i4": "int32", "u1": "uint8", "b1": "bool", "scalar": "float32"}  # fmt: skip
    for file in ("stored.npz", "compressed.npz"):
        got = out["read"][file]
        assert "error" not in got, got
        for name, array in typed.items():
            entry = got[name]
            assert entry["dtype"] == kinds[name] and entry["shape"] == list(array.shape), name
            values = np.asarray(entry["values"])
            want = np.asarray(array).ravel()
            if name == "i8":
                values = np.array([int(v) for v in entry["values"]], np.int64)
            assert np.array_equal(values.astype(want.dtype), want), name
    big = out["read"]["big.npz"]["big"]
    assert np.array_equal(np.asarray(big["values"], np.float32), expected["big"].ravel())
    assert out["read"]["v2.npz"]["a"]["shape"] == [2, 3]
    assert [int(v) for v in out["read"]["v3.npz"]["a"]["values"]] == typed["i8"].ravel().tolist()
    errors = {
        "fortran.npz": ['"image"', "Fortran order"],
        "objects.npz": ['"things"', "Python objects"],
        "bigendian.npz": ['"a"', "big-endian"],
        "structured.npz": ['"s"', "structured"],
        "half.npz": ['"h"', "<f2", "float32 (<f4)"],
        "truncated.npz": ["truncated.npz", "not a readable .npz"],
    }
    for file, words in errors.items():
        message = out["read"][file].get("error", "")
        assert all(w in message for w in words), (file, message)

    prepared = dict(zip(expected["prepare"], out["prepare"]))
    beyond = out["prepare"][len(expected["prepare"])].get("error", "")
    assert all(w in beyond for w in ('"labels"', "holds 4 at [4]", "outside 0 to 3")), beyond
    x32 = expected["prepare"]["labels_i4.npz"]["x"].astype(np.float32)
    for name in ("labels_i4.npz", "labels_u1.npz", "labels_b1.npz", "labels_f8.npz"):
        got = prepared[name]
        assert "error" not in got, (name, got)
        assert (got["samples"], got["steps"], got["dropped"]) == (5, 2, 1)
        assert got["arrays"]["x"]["dtype"] == "float32"
        assert np.array_equal(np.asarray(got["arrays"]["x"]["values"], np.float32), x32.ravel())
        labels = expected["prepare"][name]["labels"].astype(np.int64)
        assert got["arrays"]["labels"]["dtype"] == "int64"
        assert [int(v) for v in got["arrays"]["labels"]["values"]] == labels.tolist()
        last = got["last_batch"]  # batch 2 of 2: samples 2 and 3 (sample 4 dropped)
        assert last["x"]["dims"] == [2, 1, 2, 2] and last["labels"]["dims"] == [2]
        assert np.array_equal(np.asarray(last["x"]["values"], np.float32), x32[2:4].ravel())
        assert [int(v) for v in last["labels"]["values"]] == labels[2:4].tolist()
    refusals = {
        "labels_fraction.npz": ['"labels"', "1.5", "[1]", "whole number"],
        "labels_negative.npz": ['"labels"', "-2", "[2]", "class indices"],
        "x_nan.npz": ['"x"', "NaN", "[2, 0, 0, 1]", "finite"],
        "x_shape.npz": ['"x"', "(5, 1, 3, 2)", "(N, 1, 2, 2)"],
        "no_labels.npz": ['lacks "labels"', "it has: x"],
        "counts.npz": ['"labels" has 4 samples', '"x" has 5'],
    }
    for name, words in refusals.items():
        message = prepared[name].get("error", "")
        assert all(w in message for w in words), (name, message)

    weights = expected["weights"]
    assert np.array_equal(np.asarray(out["rows"][0], np.float32), weights["conv"].reshape(6, -1))
    for got, group in ((out["rows"][1], 2), (out["rows"][2], 1)):
        want = rows_view(weights["convt"], op="ConvTranspose", role="weight", group=group)
        assert np.array_equal(np.asarray(got, np.float32), want.reshape(len(want), -1))

    parts = out["kernels"][0]
    assert "error" not in parts, parts
    want = expected["convt_rows"].copy()
    want[[0, 2, 3, 5]] = expected["train_rows"]
    assert np.array_equal(np.asarray(parts["rows"], np.float32), want.reshape(6, -1))
    assert parts["fixed"] == [1, 4]
    tiles = parts["tiles"]
    assert [(t["height"], t["width"]) for t in tiles] == [(3, 3)] * 6
    np.testing.assert_allclose(
        np.asarray(tiles[1]["values"]), want[1].mean(axis=0).ravel(), rtol=1e-6, atol=1e-7
    )
    strips = out["kernels"][1]["tiles"]
    assert [(t["height"], t["width"]) for t in strips] == [(1, 3)] * 5
    np.testing.assert_allclose(
        np.asarray(strips[4]["values"]), weights["conv1d"][4].mean(axis=0), rtol=1e-6, atol=1e-7
    )
    volume = out["kernels"][2]
    assert volume["fixed"] == [0, 1]
    np.testing.assert_allclose(
        np.asarray(volume["tiles"][1]["values"]), weights["conv3d"][1, 0, 1].ravel(), rtol=1e-6
    )
    assert volume["peak"] == pytest.approx(np.abs(weights["conv3d"][:, 0, 1]).max(), rel=1e-6)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path)  # sent as given: no normalising of ".." or "%2e"
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type") or "", body


def _check_server(node: str, site: Path, folder: Path) -> None:
    served = folder / "served"
    shutil.copytree(site, served)
    (folder / "secret.txt").write_text("outside the site\n")
    (served / "link.txt").symlink_to(folder / "secret.txt")
    process = subprocess.Popen(
        [node, str(WEB / "serve.js"), str(served)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        types = {
            "/": "text/html",
            "/index.html": "text/html",
            "/onnxfix-web.js": "text/javascript",
            "/ort/ort.training.wasm.min.js": "text/javascript",
            "/ort/ort-training-wasm-simd-threaded.mjs": "text/javascript",
            "/ort/ort-training-wasm-simd-threaded.wasm": "application/wasm",
            "/site.json": "application/json",
            "/artifacts/checkpoint": "application/octet-stream",
        }
        for path, kind in types.items():
            status, content_type, _ = _get(port, path)
            assert (status, content_type.split(";")[0]) == (200, kind), path
        status, _, body = _get(port, "/site.json")
        assert body == (served / "site.json").read_bytes()
        for path in (
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/ort/..%2f..%2fsecret.txt",
            "/link.txt",
        ):
            status, _, body = _get(port, path)
            assert status in (403, 404) and b"outside the site" not in body, (path, status)
        assert _get(port, "/nothing.js")[0] == 404
        assert _get(port, "/site.json", "POST")[0] == 405
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.slow  # 2.7 s: the fast run stays under a minute
def test_page_library_in_node(node, web_case, tmp_path):
    """The page's .npz reader and writer, data checks, batches, kernel rows and error decoding
    (run in Node), and web/serve.js."""
    case = web_case("edge-adamw")
    cases, expected = _library_files(tmp_path)
    done = subprocess.run(
        [node, str(HERE / "lib_check.js"), str(PAGE_JS), str(tmp_path), str(case.site_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    _check_library(out, expected)

    # The writer: numpy reads every member, names and values exact.
    with np.load(tmp_path / "written.npz") as npz:
        assert sorted(npz.files) == sorted(expected["written"])
        for name, array in expected["written"].items():
            got = npz[name]
            assert got.dtype == np.dtype("<f4") and list(got.shape) == array["shape"], name
            assert np.array_equal(got.ravel(), np.asarray(array["values"], np.float32)), name
    assert out["write_read_back"]["layer/1.bias"]["values"] == [
        float(v) for v in np.asarray([1.5, -2.25, 3e-8], np.float32)
    ]

    # A wrongly shaped step fails inside WebAssembly with a bare number; the message is read.
    thrown = out["session"]["thrown"]
    assert thrown is not None, out["session"]
    assert thrown["type"] == "number"
    assert "ONNX Runtime failed inside WebAssembly" in thrown["message"]
    assert "Got invalid dimensions for input: image" in thrown["message"], thrown

    _check_server(node, case.site_dir, tmp_path)


# -- training: Python, Node and the page -------------------------------------------------------


def _check_defaults(case) -> None:
    """The page trains at ONNX Runtime's default learning rate, which site.json states."""
    assert case.site["learning_rate"] == 0.001
    assert np.float32(case.reference.learning_rate) == np.float32(case.site["learning_rate"])


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ALL_CASES)
def test_node_trains_like_python(node, web_case, case_id, run, tmp_path):
    case = web_case(case_id)
    _check_defaults(case)
    result = run_node(node, case)
    assert result["training_input_names"] == [
        *(s["name"] for s in case.site["inputs"]),
        *([case.site["target"]["name"]] if case.site["target"] else []),
    ]
    before = as_parameters(result, case.site, "parameters_before")
    for name, values in before.items():
        assert values.tobytes() == case.reference.before[name].tobytes(), name
    trained = check_training(result, case)
    npz = tmp_path / "trained_parameters.npz"
    npz.write_bytes(base64.b64decode(result["parameters_npz_b64"]))
    check_export(run, case, npz, trained)


def _check_screenshot(path: Path, rects: dict) -> None:
    """Not blank: many colours; the loss chart holds its two curves; the kernels both signs."""
    image = read_png(path).astype(np.int32)
    packed = (image[..., 0] << 16) | (image[..., 1] << 8) | image[..., 2]
    assert len(np.unique(packed)) > 200, "the screenshot has few colours"

    def crop(rect: dict) -> np.ndarray:
        x, y = int(rect["x"]), int(rect["y"])
        return image[y : y + int(rect["height"]), x : x + int(rect["width"])]

    def near(region: np.ndarray, colour: tuple[int, int, int], within: int = 40) -> int:
        return int((np.abs(region - np.asarray(colour)).max(axis=2) <= within).sum())

    chart = crop(rects["chart"])
    assert chart.size and (chart != chart[0, 0]).any(axis=2).mean() > 0.01, "empty loss chart"
    assert near(chart, (91, 143, 214)) > 50, "no per-step loss curve"
    assert near(chart, (217, 72, 15)) > 10, "no per-epoch mean"
    kernels = crop(rects["kernels"])
    red = ((kernels[..., 0] - kernels[..., 2]) > 80).sum()
    blue = ((kernels[..., 2] - kernels[..., 0]) > 80).sum()
    assert red > 50 and blue > 50, "no kernel pictures"


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ALL_CASES)
def test_page_trains_like_python(node, chromium, web_case, case_id, run):
    case = web_case(case_id)
    _check_defaults(case)
    result = run_browser(node, chromium, case)
    assert (result["state"], result["error"]) == ("done", None), (
        result["status"],
        result["console"],
    )
    assert not [m for m in result["console"] if m.startswith(("pageerror", "requestfailed"))]
    assert result["data"] == {
        "source": "the bundled sample",
        "samples": case.site["sample"]["samples"],
    }
    trained = check_training(result, case)
    check_export(run, case, Path(result["download"]), trained)
    _check_screenshot(Path(result["screenshot"]), result["rects"])


@pytest.mark.slow
def test_page_shows_data_errors(node, chromium, web_case, tmp_path):
    """A bad data file is refused in the page, the array named, and the page stays usable."""
    case = web_case("edge-adamw")
    site = tmp_path / "site"
    shutil.copytree(case.site_dir, site)
    with np.load(case.site_dir / "sample.npz") as npz:
        image, labels = npz["image"], npz["labels"]
    np.savez(site / "sample.npz", image=np.asfortranarray(image[:, 0, :, :]), labels=labels)
    out = tmp_path / "page.json"
    command = [
        node, str(WEB / "drive_page.js"), "--site", str(site), "--chromium", chromium,
        "--out", str(out), "--screenshot", str(tmp_path / "page.png"), "--timeout", "60",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert done.returncode == 0, (done.stderr, result.get("harness_error"))
    assert result["state"] == "error"
    assert '"image"' in result["error"] and "Fortran order" in result["error"]
    assert result["error"] == result["status"]  # shown in the page, not only in the console
    assert result["error"].startswith("Could not use the bundled sample: ")
    assert result["parameters"] is not None  # the session still answers

"""show and train --plot: the pictures hold what they say. The fixed tiles are read back from
the PNG's pixels through the colour scale and must give the kernel's values."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from onnxfix import make_artifacts, set_kernel, train
from onnxfix.commands.show import show
from tests.support.factories import SOBEL_X
from tests.support.paths import SAMPLES
from tests.support.png import read_png

pytest.importorskip("matplotlib")  # the plot extra; the test extra installs it


def _read_back(image: np.ndarray, tile) -> np.ndarray:
    """The values a tile's cells show, by the nearest colour of the layer's scale."""
    from matplotlib import colormaps

    table = (colormaps["RdBu_r"](np.linspace(0, 1, 256))[:, :3] * 255).astype(float)
    values = np.empty(tile.values.shape)
    for i in range(tile.values.shape[0]):
        for j in range(tile.values.shape[1]):
            x, y = tile.centres[i, j]
            pixel = image[int(round(y)), int(round(x))].astype(float)
            index = int(np.argmin(((table - pixel) ** 2).sum(axis=1)))
            values[i, j] = -tile.vmax + 2 * tile.vmax * index / 255
    return values


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("show")
    set_kernel(
        SAMPLES / "edge_cnn.onnx", tmp / "f.onnx", layers="edges", kernel="sobel-x", channels="0,2"
    )
    return tmp / "f.onnx"


def test_fixed_tiles_show_the_kernels_values(fixed, tmp_path, run):
    out = tmp_path / "k.png"
    r = run("show", fixed, "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout == f"wrote {out} (2 layers: /edges/Conv, /features/features.1/Conv)\n"
    image = read_png(out)
    result = show(fixed, tmp_path / "k2.png")
    assert read_png(tmp_path / "k2.png").shape == image.shape
    assert image.shape[1] >= 600 and image.shape[0] >= 300
    fixed_tiles = [t for t in result.tiles if t.fixed]
    assert [(t.layer, t.channel) for t in fixed_tiles] == [("/edges/Conv", 0), ("/edges/Conv", 2)]
    step = 2 * fixed_tiles[0].vmax / 255
    for tile in fixed_tiles:
        assert np.array_equal(tile.values, SOBEL_X)
        np.testing.assert_allclose(_read_back(image, tile), SOBEL_X, atol=1.5 * step)
    # A learned tile is read back too: the picture is not a drawing of the fixed kernel.
    learned = next(t for t in result.tiles if t.layer == "/edges/Conv" and t.channel == 1)
    np.testing.assert_allclose(_read_back(image, learned), learned.values, atol=1.5 * step)
    assert not np.allclose(learned.values, SOBEL_X)


@pytest.mark.slow  # the fast run stays under a minute
def test_before_and_after_training(fixed, tmp_path):
    make_artifacts(fixed, tmp_path / "art", loss="cross-entropy", self_test=False)
    shutil.copytree(tmp_path / "art", tmp_path / "untrained")
    train(tmp_path / "art", SAMPLES / "edges_train.npz", epochs=2, lr=0.05)
    result = show(
        tmp_path / "art", tmp_path / "ba.png", layers="edges", before=tmp_path / "untrained"
    )
    image = read_png(tmp_path / "ba.png")
    by = {(t.state, t.channel): t for t in result.tiles}
    assert {s for s, _ in by} == {"before", "after"}
    for channel in (0, 2):  # fixed: the same values before and after
        assert np.array_equal(by["before", channel].values, by["after", channel].values)
        np.testing.assert_allclose(
            _read_back(image, by["after", channel]),
            SOBEL_X,
            atol=1.5 * 2 * by["after", 0].vmax / 255,
        )
    for channel in (1, 3):  # learned: moved
        assert not np.array_equal(by["before", channel].values, by["after", channel].values)


@pytest.mark.slow  # the fast run stays under a minute
def test_train_plot_draws_the_curves(fixed, tmp_path, run):
    make_artifacts(fixed, tmp_path / "art", loss="cross-entropy", self_test=False)
    r = run(
        "train", tmp_path / "art", "--data", SAMPLES / "edges_train.npz", "--val",
        SAMPLES / "edges_val.npz", "--epochs", "3", "--log-every", "2", "--plot", tmp_path / "loss.png",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == f"wrote {tmp_path / 'loss.png'}"
    image = read_png(tmp_path / "loss.png")
    assert image.shape == (360, 1000, 3)  # two panels: loss, and accuracy
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def test_without_matplotlib_the_error_says_how_to_get_it(fixed, tmp_path, run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = run("show", fixed, "-o", tmp_path / "k.png")
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: pictures need matplotlib, an optional dependency: pip install 'onnxfix[plot]'\n"
    )
    assert not (tmp_path / "k.png").exists()


def test_a_checkpoint_alone_is_drawn_with_its_fixed_channels(fixed, tmp_path):
    """A checkpoint file has no graph: its conv-shaped parameters are drawn, the tensor
    trained in parts joined, its fixed channels marked from the checkpoint's own record."""
    make_artifacts(fixed, tmp_path / "art", loss="cross-entropy", self_test=False)
    result = show(tmp_path / "art" / "checkpoint", tmp_path / "c.png", layers="edges.weight")
    assert result.layers == ["edges.weight"]
    assert [t.channel for t in result.tiles if t.fixed] == [0, 2]
    image = read_png(tmp_path / "c.png")
    tile = next(t for t in result.tiles if t.channel == 2)
    np.testing.assert_allclose(_read_back(image, tile), SOBEL_X, atol=1.5 * 2 * tile.vmax / 255)


def test_train_plot_never_writes_over_a_file_train_reads(fixed, tmp_path, run):
    """--plot onto the data (or the checkpoint train saves) is refused before training."""
    make_artifacts(fixed, tmp_path / "art", loss="cross-entropy", self_test=False)
    data = tmp_path / "train.npz"
    shutil.copy(SAMPLES / "edges_train.npz", data)
    before = (tmp_path / "art" / "checkpoint").read_bytes()
    r = run("train", tmp_path / "art", "--data", data, "--plot", data)
    assert r.exit_code == 1
    assert "is the same file as the training data" in r.stderr
    assert r.stdout == ""
    assert data.read_bytes() == (SAMPLES / "edges_train.npz").read_bytes()
    assert (tmp_path / "art" / "checkpoint").read_bytes() == before


def test_layers_are_chosen_by_module_path_as_set_kernel_chooses_them(tmp_path):
    from tests.support.paths import DATA

    model = DATA / "torch" / "mobile_block.dynamo.onnx"  # nodes named node_conv2d_N
    assert show(model, tmp_path / "k.png", layers="se.*").layers == [
        "node_conv2d_2",
        "node_conv2d_3",
    ]
    assert show(model, tmp_path / "k.png", layers=("project", "stem")).layers == [
        "node_conv2d", "node_conv2d_4",
    ]  # fmt: skip

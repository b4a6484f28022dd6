"""Every set-kernel error: exit 1, one exact 'Error:' line, nothing written, no traceback."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tests.support.factories import quantized_model, save, single_conv


def fails(run, tmp_path, *args: str) -> str:
    out = tmp_path / "out.onnx"
    result = run("set-kernel", *args, "-o", out)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    return result.stderr[len("Error: ") : -1]


def test_selector_matches_nothing(run, tmp_path, cnn):
    assert fails(run, tmp_path, cnn, "--layer", "conv9", "--kernel", "box") == (
        "--layer 'conv9' matches no conv layer; the model has: #0 'conv1' (weight 'conv1.weight'), "
        "#1 'conv2' (weight 'conv2.weight'). Use a node name, a weight name, a module path, #N or a glob."
    )


def test_selector_matching_nothing_in_a_big_model_lists_the_closest_layers(run, tmp_path):
    """A backbone has hundreds of convs: the message names the few nearest the selector."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights = [], []
    for i in range(12):
        weights.append(numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), f"s{i}.weight"))
        x, y = f"t{i}" if i else "x", f"t{i + 1}" if i < 11 else "y"
        nodes.append(helper.make_node("Conv", [x, f"s{i}.weight"], [y], name=f"stage{i}.conv"))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 32, 32]) for n in "xy"]
    graph = helper.make_graph(nodes, "chain", io[:1], io[1:], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = save(model, tmp_path / "chain.onnx")
    assert fails(run, tmp_path, path, "--layer", "stage1O.conv", "--kernel", "box") == (
        "--layer 'stage1O.conv' matches no conv layer; the model has 12 conv layers ('onnxfix "
        "inspect' lists them), the closest: #1 'stage1.conv' (weight 's1.weight'), "
        + ", ".join(f"#{i} 'stage{i}.conv' (weight 's{i}.weight')" for i in range(5, 12))
        + ". Use a node name, a weight name, a module path, #N or a glob."
    )
    message = fails(run, tmp_path, path, "--layer", "zzz", "--kernel", "box")
    assert message.startswith(
        "--layer 'zzz' matches no conv layer; the model has 12 conv layers ('onnxfix inspect' "
        "lists them), the first: #0 'stage0.conv' (weight 's0.weight'), "
    )
    assert message.count(" (weight ") == 8 and "#7 'stage7.conv'" in message


def test_index_out_of_range(run, tmp_path, cnn):
    assert fails(run, tmp_path, cnn, "--layer", "#2", "--kernel", "box") == (
        "--layer '#2': the model has 2 conv layers, indices #0 to #1"
    )


def test_wrong_kernel_shape(run, tmp_path, cnn):
    np.save(tmp_path / "k.npy", np.ones((5, 5)))
    k = tmp_path / "k.npy"
    assert fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", k) == (
        f"layer 'conv1' expects a kernel of shape (8, 3, 3, 3) (8 output channels); kernel '{k}' "
        "holds (5, 5). Give a (3, 3), (8, 3, 3) or (8, 3, 3, 3) array."
    )


def test_fixed_size_filter_on_wrong_conv(run, tmp_path):
    path = save(single_conv((2, 1, 5, 5)), tmp_path / "m.onnx")
    message = fails(run, tmp_path, path, "--layer", "conv", "--kernel", "sharpen")
    assert message.startswith("sharpen") and "5x5" in message


def test_pickled_npy_refused(run, tmp_path, cnn):
    k = tmp_path / "evil.npy"
    np.save(k, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", k) == (
        f"kernel file '{k}' holds pickled Python objects, which onnxfix never loads; save a plain "
        "numeric array with numpy.save"
    )


def test_pickle_file_named_npy_refused(run, tmp_path, cnn):
    k = tmp_path / "evil2.npy"
    k.write_bytes(pickle.dumps([1, 2, 3]))
    message = fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", k)
    assert message.startswith(f"kernel file '{k}' ")


@pytest.mark.parametrize(
    "literal, message",
    [
        (
            "[[1,2],[3]]",
            "kernel literal '[[1,2],[3]]' is not a regular array of numbers (rows of equal length)",
        ),
        (
            "[1,2",
            "kernel literal '[1,2' is not a list of numbers; write it like '[[-1,0,1],[-2,0,2],[-1,0,1]]'",
        ),
    ],
)
def test_bad_literal(run, tmp_path, cnn, literal, message):
    assert fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", literal) == message


def test_nan_refused(run, tmp_path, cnn):
    k = tmp_path / "nan.npy"
    np.save(k, np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0]]))
    assert fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", k) == (
        f"kernel '{k}' for layer 'conv1' holds nan at index (0, 0, 1, 1); kernels must be finite"
    )


def test_overflow_refused(run, tmp_path):
    path = save(single_conv((2, 1, 3, 3), dtype=np.float16), tmp_path / "m.onnx")
    assert fails(
        run, tmp_path, path, "--layer", "conv", "--kernel", "[[0,0,0],[0,70000,0],[0,0,0]]"
    ) == (
        "kernel '[[0,0,0],[0,70000,0],[0,0,0]]' for layer 'conv' holds 70000, beyond the largest "
        "float16 value; scale the kernel down"
    )


def test_quantized_refused(run, tmp_path):
    path = save(quantized_model(), tmp_path / "q.onnx")
    assert fails(run, tmp_path, path, "--layer", "int_conv", "--kernel", "box") == (
        "layer 'int_conv' is quantized (ConvInteger); onnxfix fixes float kernels only. Set the kernel "
        "in the float model, fine-tune it, then quantize"
    )
    assert fails(run, tmp_path, path, "--layer", "qdq_conv", "--kernel", "box") == (
        "layer 'qdq_conv' is quantized (Conv with a DequantizeLinear weight); onnxfix fixes float "
        "kernels only. Set the kernel in the float model, fine-tune it, then quantize"
    )


def test_missing_model(run, tmp_path):
    assert fails(run, tmp_path, tmp_path / "nope.onnx", "--layer", "a", "--kernel", "box") == (
        f"model file '{tmp_path / 'nope.onnx'}' does not exist"
    )


def test_not_an_onnx_file(run, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    message = fails(run, tmp_path, bad, "--layer", "a", "--kernel", "box")
    assert str(bad) in message


def test_unknown_kernel_name(run, tmp_path, cnn):
    message = fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", "sobel-z")
    assert message.startswith("--kernel 'sobel-z' is not a .npy file, FILE.npz:KEY, a literal")
    assert "sobel-x" in message and "see 'onnxfix kernels'" in message


def test_output_is_input(run, tmp_path, cnn):
    result = run("set-kernel", cnn, "--layer", "conv1", "--kernel", "box", "-o", cnn)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: output '{cnn}' is the input model; onnxfix never changes its input unless you add "
        "--in-place\n"
    )


def test_channels_out_of_range(run, tmp_path, cnn):
    assert fails(run, tmp_path, cnn, "--layer", "conv1", "--kernel", "box", "--channels", "9") == (
        "--channels '9': channel 9 is out of range for layer 'conv1', which has 8 output channels "
        "(0 to 7)"
    )


def test_usage_error_is_exit_2(run, tmp_path, cnn):
    result = run("set-kernel", cnn, "--layer", "conv1", "--kernel", "box")
    assert result.exit_code == 2
    assert "give exactly one of -o OUTPUT and --in-place" in result.stderr

"""Layer selectors and freeze patterns by PyTorch module path, as both exporters record it:
TorchScript in node names (and a folded BatchNorm renames the weight onnx::Conv_N), the dynamo
exporter in node metadata (its nodes are named node_conv2d_N)."""

from __future__ import annotations

import onnx
import pytest

from onnxfix import set_kernel
from onnxfix.commands.inspect import trainability
from onnxfix.kernels.layers import find_convs, module_paths, resolve_layers
from tests.support.paths import DATA

TORCH = DATA / "torch"


def _convs(name: str):
    return find_convs(onnx.load(str(TORCH / f"{name}.onnx"), load_external_data=False))


@pytest.mark.parametrize(
    ("model", "selector", "nodes"),
    [
        # TorchScript folded conv1's BatchNorm: its weight is onnx::Conv_30, the node /conv1/Conv
        ("cnn_bn.torchscript", "conv1", ["/conv1/Conv"]),
        ("cnn_bn.dynamo", "conv1", ["node_Conv_21"]),
        ("mobile_block.torchscript", "se.reduce", ["/se/reduce/Conv"]),
        ("mobile_block.dynamo", "se.reduce", ["node_conv2d_2"]),
        ("mobile_block.dynamo", "se.*", ["node_conv2d_2", "node_conv2d_3"]),
        ("mobile_block.torchscript", "se.*", ["/se/reduce/Conv", "/se/expand/Conv"]),
        ("cnn_bn.torchscript", "onnx::Conv_3*", ["/conv1/Conv", "/dw/Conv"]),  # weight globs
    ],
)
def test_selectors_find_module_paths_in_both_exports(model, selector, nodes):
    assert [c.node for c in resolve_layers(_convs(model), [selector])] == nodes


def test_nested_torchscript_scopes_make_one_path():
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/layer1/layer1.0/conv1/Conv")
    assert module_paths(node, "onnx::Conv_193") == ("layer1.0.conv1",)


@pytest.mark.parametrize(
    "scopes", ["not a list", "[" * 2000, "['', 1, 'conv']", "x" * 5000, "__import__('os')"]
)
def test_hostile_scope_metadata_is_ignored(scopes):
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="node_conv2d")
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
    assert module_paths(node, "w") == ()


def test_set_kernel_by_module_path_on_a_folded_torchscript_export(tmp_path):
    out = tmp_path / "f.onnx"
    result = set_kernel(TORCH / "cnn_bn.torchscript.onnx", out, layers="conv1", kernel="sobel-x")
    assert [(f.tensor, f.layer) for f in result.fixed] == [("onnx::Conv_30", "/conv1/Conv")]


def test_freeze_patterns_match_module_paths_in_a_dynamo_export():
    t = trainability(TORCH / "mobile_block.dynamo.onnx", freeze="se.*")
    assert {"se.reduce.weight", "se.reduce.bias", "se.expand.weight", "se.expand.bias"} <= set(
        t.frozen
    )
    assert "stem.weight" in t.trainable

"""Tiny models built in code for the tests, seeded so every run sees the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

# OpenCV's 3x3 Sobel x kernel (cv2.getDerivKernels(1, 0, 3)), the 'sobel-x' named kernel.
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def save(model: onnx.ModelProto, path: Path, *, external: bool = False) -> Path:
    onnx.checker.check_model(model)
    if external:
        onnx.save(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".weights",
            size_threshold=0,
        )
    else:
        onnx.save(model, path)
    return path


def simple_cnn(seed: int = 0, dtype=np.float32, classes: int = 10) -> onnx.ModelProto:
    """x[1,3,16,16] -> conv1 3x3 (8) -> Relu -> conv2 3x3 (8) -> Relu -> GAP -> head -> y[1,10]."""
    rng = _rng(seed)
    ttype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(dtype), "conv1.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(dtype), "conv1.bias"),
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(dtype), "conv2.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(dtype), "conv2.bias"),
        numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8)).astype(dtype), "head.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(dtype), "head.bias"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "head.weight", "head.bias"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "simple_cnn",
        [helper.make_tensor_value_info("x", ttype, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", ttype, [1, classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxfix-tests"
    )
    model.ir_version = 8
    helper.set_model_props(model, {"author": "tests"})
    return model


def single_conv(
    weight_shape: tuple[int, ...],
    *,
    op: str = "Conv",
    group: int = 1,
    dtype=np.float32,
    bias: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """One Conv or ConvTranspose on an input sized to fit, 'same' padding for odd kernels."""
    rng = _rng(seed)
    ttype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    spatial = weight_shape[2:]
    if op == "Conv":
        cin, cout = weight_shape[1] * group, weight_shape[0]
    else:
        cin, cout = weight_shape[0], weight_shape[1] * group
    size = {1: (12,), 2: (9, 10), 3: (5, 6, 7)}[len(spatial)]
    pads = [k // 2 for k in spatial] * 2
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, weight_shape).astype(dtype), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (cout,)).astype(dtype), "b"))
        inputs.append("b")
    node = helper.make_node(op, inputs, ["y"], name="conv", group=group, pads=pads)
    graph = helper.make_graph(
        [node],
        "single_conv",
        [helper.make_tensor_value_info("x", ttype, [1, cin, *size])],
        [helper.make_tensor_value_info("y", ttype, [1, cout, *size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def node_weight_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    """simple_cnn with conv1's weight held by a node: Constant, ConstantOfShape, Identity or Cast."""
    model = simple_cnn(seed)
    graph = model.graph
    w = next(t for t in graph.initializer if t.name == "conv1.weight")
    values = numpy_helper.to_array(w)
    graph.initializer.remove(w)
    if kind == "Constant":
        node = helper.make_node(
            "Constant", [], ["conv1.weight"], name="const_w", value=numpy_helper.from_array(values)
        )
        new = [node]
    elif kind == "ConstantOfShape":
        shape = helper.make_node(
            "Constant",
            [],
            ["w_shape"],
            name="w_shape_const",
            value=numpy_helper.from_array(np.array(values.shape, np.int64)),
        )
        node = helper.make_node(
            "ConstantOfShape",
            ["w_shape"],
            ["conv1.weight"],
            name="cos_w",
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25]),
        )
        new = [shape, node]
    elif kind in ("Identity", "Cast"):
        src = values if kind == "Identity" else values.astype(np.float64)
        graph.initializer.append(numpy_helper.from_array(src, "stored.weight"))
        attrs = {"to": TensorProto.FLOAT} if kind == "Cast" else {}
        new = [
            helper.make_node(
                kind, ["stored.weight"], ["conv1.weight"], name=f"{kind.lower()}_w", **attrs
            )
        ]
    else:
        raise ValueError(kind)
    for n in reversed(new):
        graph.node.insert(0, n)
    return model


def shared_weight_model(seed: int = 0) -> onnx.ModelProto:
    """Two convs that read one initializer (conv2 through an Identity, as TorchScript exports do)."""
    rng = _rng(seed)
    w = numpy_helper.from_array(
        rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "shared.weight"
    )
    nodes = [
        helper.make_node("Conv", ["x", "shared.weight"], ["a"], name="convA", pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["shared.weight"], ["tied"], name="tie"),
        helper.make_node("Conv", ["a", "tied"], ["y"], name="convB", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def quantized_model() -> onnx.ModelProto:
    rng = _rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-8, 8, (4, 3, 3, 3)).astype(np.int8), "wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["w"], name="dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="qdq_conv"),
        helper.make_node("ConvInteger", ["xi", "wq"], ["yi"], name="int_conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "quant",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("xi", TensorProto.INT8, [1, 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]),
            helper.make_tensor_value_info("yi", TensorProto.INT32, [1, 4, 6, 6]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def reference_conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int, pads: list[int]
) -> np.ndarray:
    """Plain NumPy cross-correlation (ONNX Conv, stride 1, dilation 1), any spatial rank."""
    rank = w.ndim - 2
    xp = np.pad(
        x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[i], pads[i + rank]) for i in range(rank)]
    )
    cout, cin_g = w.shape[:2]
    k = w.shape[2:]
    out_sp = tuple(xp.shape[2 + i] - k[i] + 1 for i in range(rank))
    y = np.zeros((x.shape[0], cout, *out_sp))
    cout_g = cout // group
    for o in range(cout):
        g = o // cout_g
        xs = xp[:, g * cin_g : (g + 1) * cin_g]
        for idx in np.ndindex(*k):
            sl = tuple(slice(idx[i], idx[i] + out_sp[i]) for i in range(rank))
            y[:, o] += np.einsum(
                "nc...,c->n...",
                xs[(slice(None), slice(None), *sl)],
                w[(o, slice(None), *idx)].astype(np.float64),
            )
        if b is not None:
            y[:, o] += b[o]
    return y


def two_conv_head(seed: int = 0) -> onnx.ModelProto:
    """x[N,1,6,6] -> conv1 3x3 (2, no bias) -> conv2 1x1 (3, bias) -> Flatten -> Gemm -> y[N,4].

    Small enough for an independent NumPy backward pass.
    """
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(
            rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), "conv1.weight"
        ),
        numpy_helper.from_array(
            rng.normal(0, 0.5, (3, 2, 1, 1)).astype(np.float32), "conv2.weight"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, (3,)).astype(np.float32), "conv2.bias"),
        numpy_helper.from_array(rng.normal(0, 0.2, (4, 48)).astype(np.float32), "head.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "head.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight"], ["h1"], name="conv1"),
        helper.make_node("Conv", ["h1", "conv2.weight", "conv2.bias"], ["h2"], name="conv2"),
        helper.make_node("Flatten", ["h2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "head.weight", "head.bias"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_conv_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def if_subgraph_model() -> onnx.ModelProto:
    """A conv in each branch of an If; the weights are outer-scope initializers."""
    rng = _rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w_then"),
        numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w_else"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])

    def branch(name: str, weight: str) -> onnx.GraphProto:
        conv = helper.make_node(
            "Conv", ["x", weight], ["y"], name=f"conv_{name}", pads=[1, 1, 1, 1]
        )
        return helper.make_graph([conv], name, [], [out])

    node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        name="choose",
        then_branch=branch("then", "w_then"),
        else_branch=branch("else", "w_else"),
    )
    graph = helper.make_graph(
        [node],
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [out],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def blocked_cnn(seed: int = 0) -> onnx.ModelProto:
    """simple_cnn with a CumSum (no gradient in ORT 1.19.2, no rewrite) between conv1 and conv2."""
    model = simple_cnn(seed)
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(2, np.int64), "cumsum.axis"))
    index = next(i for i, n in enumerate(graph.node) if n.name == "relu1")
    graph.node[index].output[0] = "r1_pre"
    graph.node.insert(
        index + 1, helper.make_node("CumSum", ["r1_pre", "cumsum.axis"], ["r1"], name="cumsum")
    )
    return model


def rich_model(seed: int = 0) -> onnx.ModelProto:
    """Three Conv nodes and an If with its own initializers, tensors of every kind beside them."""
    rng = np.random.default_rng(seed)

    def arr(shape, dtype=np.float32):
        return rng.normal(0, 0.3, shape).astype(dtype)

    inits = [
        numpy_helper.from_array(arr((16, 3, 3, 3)), "conv1.weight"),  # 1728 bytes
        numpy_helper.from_array(arr((16,)), "conv1.bias"),  # 64 bytes
        numpy_helper.from_array(arr((16, 16, 3, 3)), "conv2.weight"),  # 9216 bytes
        numpy_helper.from_array(arr((8, 16, 3, 3), np.float16), "conv3.weight"),  # 2304 bytes
        numpy_helper.from_array(arr((8,), np.float16), "conv3.bias"),
        numpy_helper.from_array(rng.integers(-(2**40), 2**40, (300,)), "big_int64"),  # 2400 bytes
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
        numpy_helper.from_array(np.zeros((0,), np.float32), "empty"),
        helper.make_tensor("typed_floats", TensorProto.FLOAT, [400], arr((400,)).tolist()),
        helper.make_tensor("typed_int64", TensorProto.INT64, [300], list(range(300))),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    inits[2].doc_string = "a documented tensor"
    helper.set_metadata_props(inits[3], {"origin": "tests", "layer": "conv3"})

    def branch(name: str, scale: float) -> onnx.GraphProto:
        w = numpy_helper.from_array((arr((64, 8)) * scale).astype(np.float32), f"{name}.w")
        return helper.make_graph(
            [helper.make_node("MatMul", ["flat", f"{name}.w"], [f"{name}.y"], name=f"{name}_mm")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, [1, 8])],
            [w],
        )

    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1] * 4
        ),
        helper.make_node("Conv", ["c1", "conv2.weight"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Cast", ["c2"], ["c2h"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node(
            "Conv", ["c2h", "conv3.weight", "conv3.bias"], ["c3"], name="conv3", pads=[1] * 4
        ),
        helper.make_node("Cast", ["c3"], ["c3f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["c3f", "shape"], ["flat"], name="flatten"),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="branch",
            then_branch=branch("then", 1.0),
            else_branch=branch("else", -1.0),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "rich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        inits,
        doc_string="graph documentation",
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests"
    )
    model.ir_version = 9
    model.doc_string = "model documentation"
    helper.set_model_props(model, {"author": "tests", "license": "none"})
    onnx.checker.check_model(model)
    return model


def frozen_front_cnn(seed: int = 0, *, skip: bool = False, classes: int = 3) -> onnx.ModelProto:
    """x[N,1,12,12] -> conv1 -> Relu -> conv2 -> Relu (r2) -> conv3 -> Relu -> GAP -> head.

    For --split: conv1 fixed and conv2 frozen make conv1..r2 the prefix. With ``skip``, an Add
    reads r1 (in the prefix) beside conv3's output, so the cut has two tensors (r1, r2).
    """
    rng = _rng(seed)
    inits = [
        numpy_helper.from_array(
            rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "conv1.weight"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv1.bias"),
        numpy_helper.from_array(
            rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "conv2.weight"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv2.bias"),
        numpy_helper.from_array(
            rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "conv3.weight"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv3.bias"),
        numpy_helper.from_array(rng.normal(0, 0.3, (classes, 4)).astype(np.float32), "head.weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "head.bias"),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=pads
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=pads
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node(
            "Conv", ["r2", "conv3.weight", "conv3.bias"], ["c3"], name="conv3", pads=pads
        ),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
    ]
    last = "r3"
    if skip:
        nodes.append(helper.make_node("Add", ["r1", "r3"], ["s"], name="skip"))
        last = "s"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "head.weight", "head.bias"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "frozen_front_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxfix-tests"
    )
    model.ir_version = 8
    return model


def resnet_stem(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """A ResNet-18-style front, named as torch.onnx.export names it (do_constant_folding=False):
    conv1 (64x3x7x7, stride 2, no bias) -> bn1 -> relu -> maxpool -> one basic block
    (layer1.0: conv, bn, relu, conv, bn, + identity, relu) -> GAP -> fc. x is [N, 3, 32, 32]."""
    rng = _rng(seed)
    inits: list[onnx.TensorProto] = []

    def tensor(name: str, values: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
        return name

    def bn(prefix: str, x: str, out: str) -> onnx.NodeProto:
        c = 64
        return helper.make_node(
            "BatchNormalization",
            [
                x,
                tensor(f"{prefix}.weight", rng.uniform(0.5, 1.5, c)),
                tensor(f"{prefix}.bias", rng.normal(0, 0.1, c)),
                tensor(f"{prefix}.running_mean", rng.normal(0, 0.1, c)),
                tensor(f"{prefix}.running_var", rng.uniform(0.5, 1.5, c)),
            ],
            [out],
            name=f"/{prefix.replace('.', '/')}/BatchNormalization",
            epsilon=1e-5,
        )

    def conv(prefix: str, x: str, out: str, shape, **attrs) -> onnx.NodeProto:
        fan_in = int(np.prod(shape[1:]))
        w = tensor(f"{prefix}.weight", rng.normal(0, np.sqrt(2 / fan_in), shape))
        return helper.make_node(
            "Conv", [x, w], [out], name=f"/{prefix.replace('.', '/')}/Conv", **attrs
        )

    nodes = [
        conv("conv1", "x", "c1", (64, 3, 7, 7), strides=[2, 2], pads=[3, 3, 3, 3]),
        bn("bn1", "c1", "b1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="/relu/Relu"),
        helper.make_node(
            "MaxPool",
            ["r1"],
            ["p1"],
            name="/maxpool/MaxPool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),  # fmt: skip
        conv("layer1.0.conv1", "p1", "l1", (64, 64, 3, 3), pads=[1, 1, 1, 1]),
        bn("layer1.0.bn1", "l1", "lb1"),
        helper.make_node("Relu", ["lb1"], ["lr1"], name="/layer1/layer1.0/relu/Relu"),
        conv("layer1.0.conv2", "lr1", "l2", (64, 64, 3, 3), pads=[1, 1, 1, 1]),
        bn("layer1.0.bn2", "l2", "lb2"),
        helper.make_node("Add", ["lb2", "p1"], ["s"], name="/layer1/layer1.0/Add"),
        helper.make_node("Relu", ["s"], ["rs"], name="/layer1/layer1.0/relu_1/Relu"),
        helper.make_node("GlobalAveragePool", ["rs"], ["g"], name="/avgpool/GlobalAveragePool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/Flatten"),
        helper.make_node(
            "Gemm",
            [
                "f",
                tensor("fc.weight", rng.normal(0, 0.1, (classes, 64))),
                tensor("fc.bias", np.zeros(classes)),
            ],
            ["logits"],
            name="/fc/Gemm",
            transB=1,
        ),  # fmt: skip
    ]
    graph = helper.make_graph(
        nodes,
        "resnet_stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxfix-tests"
    )
    model.ir_version = 8
    return model

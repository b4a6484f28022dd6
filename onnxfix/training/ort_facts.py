"""What onnxruntime-training 1.19.2 (CPU) can train through: facts as data.

Two kinds of source, named on each constant:

* *registry*: ``orttraining/orttraining/core/graph/gradient_builder_registry.cc`` (the
  ``REGISTER_GRADIENT_BUILDER`` list) and ``gradient_builder.cc`` of the ONNX Runtime
  repository, cross-checked against the gradient-builder classes compiled into the 1.19.2
  wheel (RTTI names ``onnxruntime::training::Get*Gradient`` in
  ``onnxruntime_pybind11_state*.so``);
* *probe*: ``tools/probe_ort_gradients.py``, which builds ``X -> Conv(W) -> op -> out``, runs
  ``generate_artifacts`` and one training step on CPU, and checks the gradient against a
  finite difference. Its results are committed in ``docs/ort-gradients.json`` (tables in
  ``docs/ort-gradients.md``), and ``tests/test_ort_facts.py`` checks these tables against them.

The registry is keyed by op type only (domain and opset are not checked), so an op type in
:data:`GRADIENT_OPS` gets its builder whatever its domain. Having a builder is not enough:
some ops train only in particular forms, or with a wrong gradient (Split with an unused
output, inference Dropout, tanh Gelu, LSTM/GRU whose W or R is frozen, ...). Those are not
tables here: ``onnxfix.training.rewrites`` rewrites them, and ``docs/ort-gradients.md`` lists
them with the probe cases that show them.
"""

from __future__ import annotations

__all__ = [
    "ORT_TRAINING_VERSION",
    "GRADIENT_OPS",
    "TRAINING_REPLACEMENTS",
    "CPU_MISSING_GRADIENT_KERNEL",
    "PAD_GRAD_MODES",
]

ORT_TRAINING_VERSION = "1.19.2"

# Registry: the default-domain op types among the REGISTER_GRADIENT_BUILDER entries of
# gradient_builder_registry.cc as built into 1.19.2 (the wheel holds 81 Get*Gradient builder
# classes, including GetConvTransposeGradient and GetResizeGradient). Registered names that are
# not ONNX ops are left out: ConcatTraining, PadAndUnflatten, FlattenAndUnpad, ShrunkenGather,
# QuickGelu, SoftmaxCrossEntropy, SparseSoftmaxCrossEntropy, SoftmaxCrossEntropyLossInternal,
# BiasGelu, FastGelu, SimplifiedLayerNormalization, BatchNormInternal, MegatronF, MegatronG,
# Send, Recv, PythonOp, FakeQuant, LSTMTraining, GRUTraining, ScaledSum, MatMulBnb4,
# ExternalGradient. Probe: any op type outside GRADIENT_OPS and TRAINING_REPLACEMENTS fails
# generate_artifacts with "The gradient builder has not been registered: <op>" when it lies on
# a float path between a trainable parameter and the loss (int/bool edges such as Shape, ArgMax
# or Greater need no gradient). Having a builder is not enough: see CPU_MISSING_GRADIENT_KERNEL,
# PAD_GRAD_MODES and the module docstring.
GRADIENT_OPS: frozenset[str] = frozenset(
    {
        "Abs",
        "Add",
        "AveragePool",
        "Cast",
        "Clip",
        "Concat",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Div",
        "Dropout",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "Identity",
        "LayerNormalization",
        "LeakyRelu",
        "Log",
        "LogSoftmax",
        "MatMul",
        "Max",
        "MaxPool",
        "Min",
        "Mul",
        "Neg",
        "Pad",
        "Pow",
        "Reciprocal",
        "ReduceL2",
        "ReduceLogSumExp",
        "ReduceMean",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "ScatterElements",
        "ScatterND",
        "Sigmoid",
        "Sin",
        "Slice",
        "Softmax",
        "SoftmaxCrossEntropyLoss",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tanh",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Where",
    }
)

# Registry + probe: default-domain ops that are not in the registry but are rewritten into a
# registered training op before the gradient graph is built (orttraining/orttraining/core/
# optimizer/batchnorm_replacement.cc, lstm_replacement.cc, gru_replacement.cc).
# BatchNormalization becomes BatchNormInternal with is_training=1: a train step normalizes
# with BATCH statistics whatever training_mode says, and running mean/var that are checkpoint
# parameters (frozen_params) are updated with momentum (default 0.9) and the biased batch
# variance (probe: special check "batchnorm"). Baked-in initializers are never updated.
TRAINING_REPLACEMENTS: dict[str, str] = {
    "BatchNormalization": "BatchNormInternal",
    "LSTM": "LSTMTraining",
    "GRU": "GRUTraining",
}

# Registry + probe: the builder exists but emits a com.microsoft gradient op that has no CPU
# kernel (CUDA only: orttraining/orttraining/training_ops/cuda/nn/conv_transpose_grad.cc,
# .../cuda/tensor/resize_grad.cc; neither class is in the 1.19.2 CPU wheel). Artifacts are
# written; creating the training session fails with "Could not find an implementation for
# ConvTransposeGrad(1)" / "ResizeGrad(1)". All Resize modes (nearest/linear/cubic) and all
# ConvTranspose variants (stride, group, dilation, output_padding) probed fail this way.
CPU_MISSING_GRADIENT_KERNEL: dict[str, str] = {
    "ConvTranspose": "ConvTransposeGrad",
    "Resize": "ResizeGrad",
}

# Registry (GetPadGradient) + probe: any other mode fails generate_artifacts with "Pad
# gradient currently supports constant mode only."
PAD_GRAD_MODES: frozenset[str] = frozenset({"constant"})

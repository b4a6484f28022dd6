"""What onnxruntime-training 1.19.2 (CPU) can train through: facts as data.

Two kinds of source, named on each constant:

* *registry*: ``orttraining/orttraining/core/graph/gradient_builder_registry.cc`` (the
  ``REGISTER_GRADIENT_BUILDER`` list) and ``gradient_builder.cc`` of the ONNX Runtime
  repository, cross-checked against the gradient-builder classes compiled into the 1.19.2
  wheel (RTTI names ``onnxruntime::training::Get*Gradient`` in
  ``onnxruntime_pybind11_state*.so``);
* *probe*: ``tools/probe_ort_gradients.py`` (results in ``docs/ort-gradients.md``), which
  builds ``X -> Conv(W) -> op -> out``, runs ``generate_artifacts`` and one training step on
  CPU, and checks the gradient against a finite difference.

The registry is keyed by op type only (domain and opset are not checked), so an op type in
:data:`GRADIENT_OPS` gets its builder whatever its domain. The rewrites that replace the ops
listed here are specified in ``docs/ort-gradients.md``.
"""

from __future__ import annotations

__all__ = [
    "ORT_TRAINING_VERSION",
    "GRADIENT_OPS",
    "TRAINING_REPLACEMENTS",
    "NO_GRADIENT",
    "NO_CPU_GRADIENT_KERNEL",
    "CPU_MISSING_GRADIENT_KERNEL",
    "WRONG_GRADIENT",
    "CONDITIONAL_GRADIENT",
    "LSTM_GRAD_DIRECTIONS",
    "GRU_GRAD_DIRECTIONS",
    "RNN_TRAINING_FACTS",
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
# ExternalGradient. Having a builder is not enough: see NO_CPU_GRADIENT_KERNEL, WRONG_GRADIENT
# and CONDITIONAL_GRADIENT.
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

# Probe: generate_artifacts fails with "The gradient builder has not been registered: <op>"
# for each of these (opset 17; Mish 18; GroupNormalization 21; Upsample opset 9). Any other op
# type outside GRADIENT_OPS and TRAINING_REPLACEMENTS fails the same way when it lies between a
# trainable parameter and the loss on a float edge (int/bool edges such as Shape, ArgMax,
# Greater need no gradient: probe cases Shape, ArgMax, Where train). GroupNormalization-18
# fails earlier: onnx >= 1.18's checker, run by onnxblock, rejects the deprecated schema.
NO_GRADIENT: frozenset[str] = frozenset(
    {
        "HardSigmoid",
        "HardSwish",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Mish",
        "ThresholdedRelu",
        "Sum",
        "Mean",
        "GlobalMaxPool",
        "ReduceMax",
        "ReduceMin",
        "ReduceSumSquare",
        "ReduceL1",
        "Upsample",
        "DepthToSpace",
        "SpaceToDepth",
        "Einsum",
        "InstanceNormalization",
        "GroupNormalization",
        "LRN",
        "RNN",
        "CumSum",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
    }
)

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
NO_CPU_GRADIENT_KERNEL: frozenset[str] = frozenset(CPU_MISSING_GRADIENT_KERNEL)

# Probe (+ gradient_builder.cc): these train without any error but with a wrong gradient.
WRONG_GRADIENT: dict[str, str] = {
    # GetSplitGradient concatenates only the outputs that HAVE a gradient, so with an unused
    # output dX has the wrong shape (a warning "Error merging shape info ... Falling back to
    # lenient merge" is all you see); upstream gradients are garbage (rel err ~1).
    "Split": "any output of the Split is unused (has no gradient)",
    # GetDropoutGradient passes only the inputs the Dropout has; without training_mode the
    # DropoutGrad kernel defaults to training and scales by 1/(1-ratio) while the forward was
    # the identity (rel err = ratio). Without the mask output the builder fails instead
    # ("i < node_->OutputDefs().size() was false").
    "Dropout": "no training_mode input (or it is false) and the mask output is present",
    # GetGeluGradient emits GeluGrad (the erf formula) and ignores `approximate`: derivative
    # off by up to 8.7e-4 (probe special check "gelu_tanh").
    "Gelu": "approximate='tanh'",
}

# Probe (+ gradient_builder.cc): the builder exists but needs the node in a particular form;
# otherwise generate_artifacts raises or the training step fails.
CONDITIONAL_GRADIENT: dict[str, str] = {
    # GetLayerNormalizationGradient uses O(1), O(2) (Mean, InvStdDev) and I(2) (bias).
    "LayerNormalization": "optional outputs Mean and InvStdDev declared and bias input present",
    "Dropout": "optional mask output declared (see WRONG_GRADIENT too)",
    "Pad": "mode='constant' ('Pad gradient currently supports constant mode only.')",
    # SliceGrad raises "narrowing_error" in the training step for any negative step.
    "Slice": "all steps positive",
    "Split": "every output used (see WRONG_GRADIENT)",
    "LSTM": "see RNN_TRAINING_FACTS",
    "GRU": "see RNN_TRAINING_FACTS",
    "BatchNormalization": "trains with batch statistics (see TRAINING_REPLACEMENTS)",
}

# Probe + kernel messages compiled into the wheel (orttraining/orttraining/training_ops/cpu/
# rnn/): "LSTM and LSTMGrad kernel only supports the forward direction for now. Provided
# direction: reverse" at session creation; the same for GRU.
LSTM_GRAD_DIRECTIONS: frozenset[str] = frozenset({"forward"})
GRU_GRAD_DIRECTIONS: frozenset[str] = frozenset({"forward"})

RNN_TRAINING_FACTS: dict[str, str] = {
    # Probe: "reverse" and "bidirectional" fail at session creation (above).
    "directions": "forward only (LSTM and GRU); RNN has no gradient at all",
    # gradient_builder.cc GetLSTMGradient copies the source node's inputs positionally,
    # skipping indices 3 (B) and 7 (P); a node with fewer inputs misaligns LSTMGrad's inputs:
    # "Type Error: Type 'tensor(float)' of input parameter (...) of operator (LSTMGrad)".
    "input_count": "LSTM needs >= 7 inputs and GRU >= 6 (pad the input list with '')",
    # Probe: SIGSEGV in the first training step when the LSTM/GRU is on the gradient path and
    # W or R is not trainable (B alone may be frozen). Keeping them frozen works by feeding
    # Add(W, Mul(Z, 0)) with a trainable scalar Z = 0 (see the doc).
    "trainable_weights": "W and R must both require grad, else the train step segfaults",
    # Kernel messages: sequence_lens unsupported; activations only the defaults (sigmoid,
    # tanh, tanh); clip unsupported; LSTM input_forget=1 unsupported. The kernel also needs
    # the all-hidden-states output, which lstm_replacement.cc adds when missing.
    "attributes": "no sequence_lens input, default activations, no clip, input_forget=0",
    # Probe: GRU linear_before_reset=0 and =1 both train with a correct gradient.
    "gru_linear_before_reset": "0 and 1 both supported",
}

# Registry (GetPadGradient) + probe.
PAD_GRAD_MODES: frozenset[str] = frozenset({"constant"})

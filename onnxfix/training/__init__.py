"""Training artifacts: planned, built, self-tested, and read back by train/export/verify.

- :mod:`~onnxfix.training.options`: losses, optimizers, target names (light: the CLI uses it);
- :mod:`~onnxfix.training.layout`: the artifacts folder (file names, the manifest record);
- :mod:`~onnxfix.training.normalize`, :mod:`~onnxfix.training.plan`,
  :mod:`~onnxfix.training.freeze`, :mod:`~onnxfix.training.rewrites`: what trains, and the
  training graph;
- :mod:`~onnxfix.training.ort_facts`: what ONNX Runtime 1.19.2 can differentiate on the CPU;
- :mod:`~onnxfix.training.ort`: the one module that imports ``onnxruntime.training``;
- :mod:`~onnxfix.training.build`, :mod:`~onnxfix.training.selftest`,
  :mod:`~onnxfix.training.isolation`: the build and its self-test, in child processes;
- :mod:`~onnxfix.training.checkpoint`: ONNX Runtime's checkpoint format, read and written;
- :mod:`~onnxfix.training.data`: training data files checked against the model.
"""

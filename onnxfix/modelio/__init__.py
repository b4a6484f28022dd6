"""ONNX model files read and written without materialising their weights.

- :mod:`~onnxfix.modelio.protowire`: the protobuf wire format's field numbers and varints;
- :mod:`~onnxfix.modelio.reader`: the streaming reader (structure in memory, payloads on disk);
- :mod:`~onnxfix.modelio.writer`: the streaming writer (payloads copied kernel-side);
- :mod:`~onnxfix.modelio.filecopy`: kernel-side copies (``os.copy_file_range``);
- :mod:`~onnxfix.modelio.staging`: the private folder an output is written in, and the copy ahead;
- :mod:`~onnxfix.modelio.modelfile`: :class:`ModelFile`, load and save;
- :mod:`~onnxfix.modelio.checks`: onnx.checker and an onnxruntime load of a written model;
- :mod:`~onnxfix.modelio.targets`: what a command may write (never a file it reads), the folder
  lock writers share, the one-step swap of two folders;
- :mod:`~onnxfix.modelio.journal`: the undo record that makes ``--in-place`` and an output's
  two renames crash-safe, and its recovery on the next load.

Nothing is imported here: set-kernel imports :mod:`~onnxfix.modelio.staging` before numpy and
onnx, so that its copy starts at once.
"""

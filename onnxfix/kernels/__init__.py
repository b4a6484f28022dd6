"""set-kernel's domain: the conv layers of a model and the kernels put into them.

- :mod:`~onnxfix.kernels.layers`: finding convs and where their weights come from;
- :mod:`~onnxfix.kernels.filters`: named filters with OpenCV semantics;
- :mod:`~onnxfix.kernels.specs`: what the user wrote after ``--kernel``, as numbers;
- :mod:`~onnxfix.kernels.fitting`: a kernel broadcast into a weight's shape and dtype;
- :mod:`~onnxfix.kernels.lifting`: a weight given an initializer of its own;
- :mod:`~onnxfix.kernels.fix`: all of it applied to a loaded model, with the provenance record.
"""

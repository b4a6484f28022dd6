"""onnxfix.kernels: the named filters."""

"""onnxfix.modelio: the wire-format reader and writer, and model files saved in place."""

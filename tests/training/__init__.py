"""onnxfix.training: artifacts, checkpoints, rewrites, trainability and the isolated child."""

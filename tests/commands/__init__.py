"""onnxfix.commands: inspect and set-kernel on models built in code."""

"""The web page's training in onnxruntime-web: Node and headless Chromium against the Python API."""

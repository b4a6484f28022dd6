"""The library API, one module per command: each checks its request, calls the layers below
(:mod:`onnxfix.kernels`, :mod:`onnxfix.training`, :mod:`onnxfix.modelio`) and returns a typed
result. A command never imports another command; :mod:`onnxfix.cli` prints what they return.
"""

"""Helpers shared by the tests; import them as ``tests.support.<module>``.

- ``paths``: the repository's folders (root, samples, test data).
- ``files``: ``sha256`` of a file.
- ``cli``: ``Run`` (the CLI in-process, the ``run`` fixture of conftest.py) and ``onnxfix``
  (the installed command in a child process).
- ``runtime``: ``session``, a quiet ONNX Runtime inference session on the CPU.
- ``factories``: tiny models built in code.
- ``wire``: protobuf wire-format pieces (fields, unknown fields) for the reader and writer tests.
- ``corpus``: the real exported models of ``tests/data`` (also used by ``tools/``).
- ``crashers``: child-process tasks that die like ONNX Runtime does; imported by the child as
  the top-level module ``crashers`` (this folder on ``PYTHONPATH``), so it imports nothing from
  ``tests``.

Nothing here is imported by this ``__init__``: each module pulls in only what it needs.
"""

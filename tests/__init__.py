"""onnxfix's tests, laid out like the package (see support/__init__.py for the shared helpers).

A package, so test modules in different folders may share a name; pytest puts the repository
root on ``sys.path`` and imports them as ``tests.<folder>.<module>``.
"""

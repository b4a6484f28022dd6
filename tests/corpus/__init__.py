"""The real exports of tests/data (support/corpus.py) through set-kernel, inspect and training.

Marked slow: ``pytest -m "not slow"`` leaves them out.
"""

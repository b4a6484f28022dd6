#!/usr/bin/env python
"""Write onnxfix/training/ort_web_ops.txt: the names onnxruntime-web 1.19.2's WebAssembly
training build holds as strings, which include every op type its kernel registry has.

    npm ci --prefix web
    python tools/ort_web_ops.py web/node_modules/onnxruntime-web/dist/ort-training-wasm-simd-threaded.wasm

Strings in a wasm data segment end in NUL; kept is the last word of each (a capital letter,
then letters and digits, right before the NUL: ``QLinearGlobalAveragePool`` of
``com.microsoft.QLinearGlobalAveragePool``). The linker merges a string that ends another, so
``GlobalAveragePool`` is only there as the end of that one: onnxfix.training.runtimes counts an
op as present when it ends one of these names. ``tests/web`` checks the file against the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "onnxfix" / "training" / "ort_web_ops.txt"
_NAME = re.compile(rb"([A-Z][A-Za-z0-9]{1,80})(?=\x00)")


def names(wasm: Path) -> list[str]:
    return sorted({m.group(1).decode("ascii") for m in _NAME.finditer(wasm.read_bytes())})


def render(wasm: Path) -> str:
    header = (
        "# Names in onnxruntime-web 1.19.2's training build (ort-training-wasm-simd-threaded.wasm),\n"
        "# written by tools/ort_web_ops.py; an op is in the build when it ends one of them.\n"
    )
    return header + "\n".join(names(wasm)) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(Path(sys.argv[1])), encoding="utf-8")
    print(f"wrote {OUT}")

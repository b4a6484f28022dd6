"""Refresh the README's ``--help`` blocks (each after a ``<!-- help: COMMAND -->`` marker).

python tools/readme_help.py          # rewrite README.md
python tools/readme_help.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from onnxfix.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- help: (?P<cmd>[a-z-]+) -->\n)(```text\n.*?```\n)?", re.S)


def help_text(command: str) -> str:
    args = ["kernels"] if command == "kernels" else [command, "--help"]
    result = CliRunner().invoke(cli, args, prog_name="onnxfix", terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def render(text: str) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}```text\n{help_text(m.group('cmd'))}```\n", text)


def main() -> int:
    current = README.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        return 0 if fresh == current else 1
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())

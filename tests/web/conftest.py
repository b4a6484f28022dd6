"""The web tests' tools (node, Chromium, web/node_modules) and their cases, built once.

Without a tool the tests skip, saying what is missing; with ONNXFIX_REQUIRE_WEB=1 (as CI sets
it) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.web.support import CASES, NODE_MODULES, ORT_WEB, Case, build_case, missing

MIN_NODE = (20, 12)  # DecompressionStream('deflate-raw'): Node 20.12 or 21.2


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with web/node_modules' onnxruntime-web 1.19.2 installed."""
    path = shutil.which("node")
    if path is None:
        missing("node is not installed (Node 20 or later)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    found = re.match(r"v(\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < MIN_NODE:
        missing(f"node {version or '(unknown version)'} is older than 20.12")
    try:
        meta = json.loads((ORT_WEB / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing(f"{ORT_WEB} is not installed: run 'npm ci --prefix web'")
    if meta.get("version") != "1.19.2":
        missing(
            f"{ORT_WEB} holds version {meta.get('version')}, not 1.19.2: run 'npm ci --prefix web'"
        )
    return path


@pytest.fixture(scope="session")
def chromium(node: str) -> str:
    """Chromium ($CHROMIUM or /usr/bin/chromium), with puppeteer-core in web/node_modules."""
    path = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        missing(f"no Chromium at {path} (set CHROMIUM, or apt-get install chromium)")
    if not (NODE_MODULES / "puppeteer-core" / "package.json").is_file():
        missing(f"{NODE_MODULES / 'puppeteer-core'} is not installed: run 'npm ci --prefix web'")
    return path


@pytest.fixture(scope="session")
def web_case(tmp_path_factory):
    """web_case(id): the case's artifacts, site and Python reference run, built once."""
    built: dict[str, Case] = {}

    def get(case_id: str) -> Case:
        if case_id not in built:
            root = tmp_path_factory.mktemp(f"web-{case_id}")
            built[case_id] = build_case(CASES[case_id], root)
        return built[case_id]

    return get

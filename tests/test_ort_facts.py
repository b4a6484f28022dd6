"""ort_facts' tables, and the rewrites, agree with what the probe measured.

``tools/probe_ort_gradients.py`` trains every op case through ONNX Runtime 1.19.2 on CPU, and
every case of an op onnxfix rewrites through the real ``rewrite_for_training``; its results
are committed in ``docs/ort-gradients.json``. These tests read that file (nothing runs ONNX
Runtime) and check, exactly, that :mod:`onnxfix.training.ort_facts` says what the probe found,
that ``freeze_plan`` trains what trains and blocks what cannot, and that every other failure
is fixed by a rewrite that trains with the original op's gradient.

When the probe's cases change, regenerate the results with
``python tools/probe_ort_gradients.py --json docs/ort-gradients.json --out docs/ort-gradients.md``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import helper

from onnxfix.errors import ArtifactsError
from onnxfix.training import ort_facts
from onnxfix.training.freeze import NON_DIFFERENTIABLE_OPS, freeze_plan, gradient_blocker
from onnxfix.training.rewrites import REWRITTEN_OPS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "ort-gradients.json"
DOC = ROOT / "docs" / "ort-gradients.md"
PROBE = ROOT / "tools" / "probe_ort_gradients.py"
REGENERATE = (
    "regenerate with: python tools/probe_ort_gradients.py --json docs/ort-gradients.json "
    "--out docs/ort-gradients.md"
)

# Probe failures that onnxfix neither blocks (freeze_plan would still train through them) nor
# rewrites, so its artifacts would fail. A Slice with a negative step has a gradient builder,
# but SliceGrad raises "narrowing_error" in the first training step. Floor, Ceil, Round and Sign
# have no builder, yet freeze.NON_DIFFERENTIABLE_OPS ends the walk there without blocking, so a
# parameter that also reaches the loss another way (the probe's y + Floor(y)) still trains and
# generate_artifacts fails. Exact: a case that starts or stops failing this way must be added
# or removed here.
KNOWN_GAPS = {"Slice flip", "Slice flip -9", "Slice step -2", "Floor", "Ceil", "Round", "Sign"}

# The reasons (the results' "why") that mean no gradient reaches the op's input at all.
NO_GRADIENT_FLOWS = {
    "no_gradient_builder",
    "no_cpu_gradient_kernel",
    "forward_direction_only",
    "pad_constant_mode_only",
}
# Wheel builder classes shared by several op types (GetAddSubGradient, GetMinMaxGradient).
SHARED_BUILDERS = {"Add": "AddSub", "Sub": "AddSub", "Min": "MinMax", "Max": "MinMax"}


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(RESULTS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def probe():
    """The probe module, imported for its case list and its renderer (nothing runs)."""
    spec = importlib.util.spec_from_file_location("probe_ort_gradients", PROBE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _node(entry: dict) -> onnx.NodeProto:
    """The probed node as the results describe it: op type, domain and attributes."""
    node = entry["node"]
    return helper.make_node(
        node["op_type"], [], [], name=node["name"], domain=node["domain"], **node["attributes"]
    )


def _listing(problems: list[str]) -> str:
    return "\n  " + "\n  ".join(problems)


# ---- the results file is the probe's, complete and current ----------------------------------
def test_results_cover_exactly_the_probes_cases(data, probe):
    recorded = {**data["ops"], **data["rewrites"]}
    missing = [n for n in probe.CASES if n not in recorded]
    stale = [n for n in recorded if n not in probe.CASES]
    assert not missing and not stale, (
        f"docs/ort-gradients.json lacks probe cases {missing} and has cases the probe no longer "
        f"defines {stale}; {REGENERATE}"
    )
    problems = []
    for name, c in probe.CASES.items():
        entry = data["ops" if c.kind == "op" else "rewrites"].get(name)
        if entry is None:
            problems.append(f"{name}: a {c.kind} case in the probe, the other kind in the results")
        elif (entry["op"], entry["opset"], entry.get("of")) != (c.op, c.opset, c.ref):
            problems.append(
                f"{name}: results say op {entry['op']} opset {entry['opset']} of "
                f"{entry.get('of')}, the probe {c.op} opset {c.opset} of {c.ref}"
            )
    assert not problems, _listing(problems) + "\n" + REGENERATE


def test_results_are_for_the_runtime_the_facts_describe(data):
    assert data["onnxruntime"] == ort_facts.ORT_TRAINING_VERSION, (
        f"the probe ran onnxruntime {data['onnxruntime']}, ort_facts describes "
        f"{ort_facts.ORT_TRAINING_VERSION}"
    )


def test_doc_tables_are_rendered_from_the_results(data, probe):
    text = DOC.read_text(encoding="utf-8")
    block = probe.BEGIN_MARK + text.split(probe.BEGIN_MARK, 1)[1].split(probe.END_MARK, 1)[0]
    assert block + probe.END_MARK == probe.render(data), (
        "the generated block of docs/ort-gradients.md is not the rendering of "
        "docs/ort-gradients.json; re-render with: python tools/probe_ort_gradients.py "
        "--from-json docs/ort-gradients.json --out docs/ort-gradients.md"
    )


def test_case_names_map_to_real_ops_and_rewrites(data):
    problems = []
    for name, entry in data["ops"].items():
        if not onnx.defs.has(entry["op"]):
            problems.append(f"op case {name}: {entry['op']} is not an ONNX op")
        if entry["node"]["op_type"] != entry["op"] or entry["node"]["domain"] != "":
            problems.append(f"op case {name}: probed node {entry['node']} is not a {entry['op']}")
    for name, entry in data["rewrites"].items():
        of = data["ops"].get(entry["of"])
        if of is None or of["op"] != entry["op"] or name != "rewrite:" + entry["of"]:
            problems.append(f"rewrite case {name}: not the rewrite of an op case of its op")
        if entry["op"] not in REWRITTEN_OPS:
            problems.append(f"rewrite case {name}: onnxfix rewrites no {entry['op']}")
        strays = {r["op"] for r in entry["rewrites"]} - {entry["op"]}
        if strays:
            problems.append(f"rewrite case {name}: rewrote other ops too: {sorted(strays)}")
    expected = {n for n, e in data["ops"].items() if e["op"] in REWRITTEN_OPS}
    covered = {e["of"] for e in data["rewrites"].values()}
    if covered != expected:
        problems.append(
            f"op cases of rewritten ops without a rewrite case: {sorted(expected - covered)}"
        )
    assert not problems, _listing(problems)


# ---- ort_facts' tables ------------------------------------------------------------------------
def test_ops_without_a_gradient_builder_are_not_in_the_registry(data):
    registered = ort_facts.GRADIENT_OPS | set(ort_facts.TRAINING_REPLACEMENTS)
    wrong = sorted(
        f"{e['op']} (case {n})"
        for n, e in data["ops"].items()
        if e["why"] == "no_gradient_builder" and e["op"] in registered
    )
    assert not wrong, (
        "the probe found no gradient builder for these, but ort_facts.GRADIENT_OPS or "
        f"TRAINING_REPLACEMENTS lists them: {wrong}"
    )


def test_ops_that_train_are_in_the_registry(data):
    known = ort_facts.GRADIENT_OPS | set(ort_facts.TRAINING_REPLACEMENTS) | NON_DIFFERENTIABLE_OPS
    missing = sorted(
        f"{e['op']} (case {n})"
        for n, e in data["ops"].items()
        if e["trains"] and e["op"] not in known
    )
    assert not missing, (
        "these trained in the probe, but ort_facts.GRADIENT_OPS (or TRAINING_REPLACEMENTS, or "
        f"freeze.NON_DIFFERENTIABLE_OPS) does not list them: {missing}"
    )


def test_gradient_ops_are_the_wheels_builders(data):
    builders = {b[len("Get") : -len("Gradient")] for b in data["wheel"]["builders"]}
    missing = sorted(
        op for op in ort_facts.GRADIENT_OPS if SHARED_BUILDERS.get(op, op) not in builders
    )
    assert not missing, f"GRADIENT_OPS lists ops with no Get*Gradient class in the wheel: {missing}"
    unlisted = sorted(
        b
        for b in builders
        if onnx.defs.has(b)
        and b not in ort_facts.GRADIENT_OPS
        and b not in ort_facts.TRAINING_REPLACEMENTS
    )
    assert not unlisted, f"the wheel has builders for ONNX ops GRADIENT_OPS lacks: {unlisted}"


def test_cpu_missing_gradient_kernels(data):
    found: dict[str, set[str]] = {}
    for e in data["ops"].values():
        if e["why"] == "no_cpu_gradient_kernel":
            found.setdefault(e["op"], set()).add(e["kernel"])
    assert found == {op: {k} for op, k in ort_facts.CPU_MISSING_GRADIENT_KERNEL.items()}, (
        f"the probe found gradient ops without a CPU kernel {found}; ort_facts."
        f"CPU_MISSING_GRADIENT_KERNEL says {ort_facts.CPU_MISSING_GRADIENT_KERNEL}"
    )
    assert set(ort_facts.CPU_MISSING_GRADIENT_KERNEL) <= ort_facts.GRADIENT_OPS
    in_wheel = set(ort_facts.CPU_MISSING_GRADIENT_KERNEL.values()) & set(
        data["wheel"]["grad_kernels"]
    )
    assert not in_wheel, f"the wheel does have CPU kernels {sorted(in_wheel)}"
    trained = sorted(
        n
        for n, e in data["ops"].items()
        if e["op"] in ort_facts.CPU_MISSING_GRADIENT_KERNEL and e["trains"]
    )
    assert not trained, f"cases of ops said to lack a CPU gradient kernel trained: {trained}"


def test_training_replacements(data):
    problems = []
    for name, e in data["ops"].items():
        became = e.get("trained_as")
        replacement = ort_facts.TRAINING_REPLACEMENTS.get(e["op"])
        if not became or became == [e["op"]]:
            if replacement and became:
                problems.append(f"{name}: trained as {became}, not replaced by {replacement}")
        elif replacement not in became:
            problems.append(
                f"{name}: the training graph holds the {e['op']} node as {became}; "
                f"TRAINING_REPLACEMENTS says {replacement}"
            )
    assert not problems, _listing(problems)


def test_pad_trains_only_in_the_listed_modes(data):
    problems = []
    for name, e in data["ops"].items():
        if e["op"] != "Pad":
            continue
        listed = e["node"]["attributes"].get("mode", "constant") in ort_facts.PAD_GRAD_MODES
        if listed != bool(e["gradient_ok"]):
            problems.append(f"{name}: mode listed {listed}, trained {e['result']}")
    assert not problems, _listing(problems)


# ---- what onnxfix does with them ---------------------------------------------------------------
@pytest.fixture(scope="module")
def planned(probe, data) -> dict[str, set[str]]:
    """For each op case, the parameters onnxfix's freeze_plan would train in the probe's model
    (its loss on the output ``out``): what onnxfix would ask ONNX Runtime to differentiate."""
    trained = {}
    for name in data["ops"]:
        model = probe.build(probe.CASES[name])[0]
        try:
            trained[name] = set(freeze_plan(model, ["out"], []).trainable)
        except ArtifactsError:  # nothing would train: every parameter is blocked
            trained[name] = set()
    return trained


def test_freeze_plan_trains_what_trains(data, planned):
    held = sorted(
        f"{name}: {sorted(set(e['trainable']) - planned[name])}"
        for name, e in data["ops"].items()
        if e["gradient_ok"] and not set(e["trainable"]) <= planned[name]
    )
    assert not held, "these train correctly, but freeze_plan would not train:" + _listing(held)


def test_gradient_blocker_names_the_ops_no_gradient_flows_through(data):
    problems = []
    for name, e in data["ops"].items():
        if e["why"] in NO_GRADIENT_FLOWS and gradient_blocker(_node(e)) is None:
            problems.append(f"{name}: no gradient flows ({e['why']}), but nothing blocks it")
    assert not problems, _listing(problems)


def test_every_failure_is_blocked_or_rewritten(data, planned):
    unhandled, broken = set(), []
    for name, e in data["ops"].items():
        if e["gradient_ok"]:
            continue
        rewrite = data["rewrites"].get("rewrite:" + name)
        if e["op"] in REWRITTEN_OPS and e["why"] != "not_runnable":
            if not (rewrite and rewrite["rewrites"] and rewrite["gradient_ok"]):
                broken.append(
                    f"{name} ({e['why']}): onnxfix rewrites {e['op']}, but this case "
                    f"{'is left as it is' if rewrite and not rewrite['rewrites'] else 'fails'}: "
                    f"{rewrite and rewrite['result']}"
                )
        elif set(e["trainable"]) & planned[name]:
            unhandled.add(name)
    assert not broken, _listing(broken)
    assert unhandled == KNOWN_GAPS, (
        "failures that freeze_plan would still train through and no rewrite fixes: "
        f"{sorted(unhandled - KNOWN_GAPS)}; KNOWN_GAPS entries that no longer are: "
        f"{sorted(KNOWN_GAPS - unhandled)}"
    )


def test_every_rewritten_op_has_a_rewrite_case_that_trains(data):
    working = {e["op"] for e in data["rewrites"].values() if e["rewrites"] and e["gradient_ok"]}
    assert not REWRITTEN_OPS - working, (
        "ops onnxfix rewrites with no probe case where the rewrite trained with the true "
        f"gradient: {sorted(REWRITTEN_OPS - working)}"
    )


def test_rewrites_train_with_the_original_gradient(data):
    problems = []
    for name, e in data["rewrites"].items():
        of = data["ops"][e["of"]]
        if e["why"] == "not_rewritten":
            if not of["gradient_ok"]:
                problems.append(f"{name}: left as it is, but the op case fails: {of['result']}")
        elif not e["gradient_ok"] and of["why"] != "not_runnable":
            problems.append(f"{name}: {e['result']} {e.get('error', '')}")
    assert not problems, _listing(problems)


def test_rewrites_said_exact_are_bitwise(data):
    problems = []
    for name, e in data["rewrites"].items():
        if not e["rewrites"] or not e["gradient_ok"]:
            continue
        equivalence = e.get("equivalence", {})
        if "bitwise" not in equivalence:
            problems.append(f"{name}: no equivalence measured ({equivalence})")
        elif all(r["exact"] for r in e["rewrites"]) and not equivalence["bitwise"]:
            problems.append(f"{name}: said bit-exact, measured {equivalence['verdict']}")
    assert not problems, _listing(problems)

"""Training rewrites of LSTM and GRU nodes into the form ORT 1.19.2's CPU kernels train.

ORT replaces LSTM/GRU by LSTMTraining/GRUTraining, whose gradient kernels run the forward
direction only, read the node's inputs by position, and crash the process (SIGSEGV) when W or
R does not train. So: every optional input is listed; a reverse or bidirectional node becomes
forward nodes (the reverse direction runs forward on the time-reversed sequence, and its
output is reversed back); and a frozen W or R reaches the node as ``Sub(W, Mul(Z, 0))``
through a new trainable scalar Z = 0, whose gradient is exactly 0 so it never moves.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx

from onnxfix.training.rewrites.emitter import Emitter, Outcome
from onnxfix.training.rewrites.facts import attributes

__all__ = ["RECURRENT_REWRITES", "ZERO_GATE_PREFIX"]

logger = logging.getLogger(__name__)

ZERO_GATE_PREFIX = "onnxfix.zero_gate."
_INPUTS = {"LSTM": 7, "GRU": 6}  # X, W, R, B, sequence_lens, initial_h[, initial_c]
_OUTPUTS = {"LSTM": 3, "GRU": 2}  # Y, Y_h[, Y_c]
_DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_PER_DIRECTION = (1, 2, 3, 5, 6, 7)  # W, R, B, initial_h, initial_c, P: [num_directions, ...]


def _unsupported(op: str, attrs: dict, directions: int) -> str | None:
    """Why ORT's training kernels cannot run this node at all (then nothing is rewritten)."""
    activations = attrs.get("activations")
    if activations and [a.lower() for a in activations] != _DEFAULT_ACTIVATIONS[op] * directions:
        return "non-default activations"
    if "clip" in attrs:
        return "clip"
    if attrs.get("input_forget", 0):
        return "input_forget=1"
    if attrs.get("layout", 0):
        return "layout=1"
    return None


def _zero_gate(ed: Emitter, inputs: list[str]) -> str | None:
    """Feed a W or R that will not train through a trainable zero; returns what was done."""
    facts = ed.facts
    w, r = inputs[1], inputs[2]
    w_trains, r_trains = facts.requires_grad(w), facts.requires_grad(r)
    on_path = w_trains or r_trains or any(facts.requires_grad(i) for i in (inputs[0], inputs[3]))
    if not on_path or (w_trains and r_trains):
        return None
    if facts.elem_type(w) != onnx.TensorProto.FLOAT:
        return None
    z = ed.parameter(f"{ZERO_GATE_PREFIX}{ed.base}", np.zeros(1, np.float32))
    zero = ed.op("Mul", [z, ed.const(0.0, np.float32)])
    gated = []
    for slot, trains in ((1, w_trains), (2, r_trains)):
        if not trains:
            inputs[slot] = ed.op("Sub", [inputs[slot], zero])
            gated.append("W" if slot == 1 else "R")
    return (
        f"frozen {' and '.join(gated)} {'enter' if len(gated) > 1 else 'enters'} as "
        f"Sub(., Mul(Z, 0)) with a new trainable scalar {z!r} = 0 "
        f"(ORT crashes training an {ed.node.op_type} whose W or R does not train; Z never moves)"
    )


def _reversed_time(ed: Emitter, x: str) -> str:
    """Indices [S-1, ..., 0] over the sequence axis of ``x``."""
    shape = ed.facts.shape(x)
    if shape and shape[0] is not None:
        return ed.i64(list(range(shape[0] - 1, -1, -1)))
    length = ed.op("Gather", [ed.op("Shape", [x]), ed.i64(0)], axis=0)
    start = ed.op("Sub", [length, ed.i64(1)])
    return ed.op("Range", [start, ed.i64(-1), ed.i64(-1)])


def _split_directions(
    ed: Emitter, node: onnx.NodeProto, inputs: list[str], outputs: list[str], both: bool
) -> None:
    """Forward-only nodes for a reverse (``both`` False) or bidirectional node; ``outputs``
    holds the node's used output names, '' for the others."""
    directions = ["forward", "reverse"] if both else ["reverse"]
    rev = _reversed_time(ed, inputs[0])
    results: list[list[str]] = []
    for k, direction in enumerate(directions):
        ins = list(inputs)
        if len(directions) == 2:
            for slot in _PER_DIRECTION:
                if slot < len(ins) and ins[slot]:
                    ins[slot] = ed.op("Gather", [ins[slot], ed.i64([k])], axis=0)
        if direction == "reverse":
            ins[0] = ed.op("Gather", [ins[0], rev], axis=0)
        outs = []
        for j, name in enumerate(outputs):
            if not name:
                outs.append("")
            elif len(directions) == 1 and j > 0:  # a reverse node's final states are final
                outs.append(name)
            else:
                outs.append(ed.facts.fresh(f"{ed.base}/onnxfix_rewrite/{direction}/{j}"))
        while outs and not outs[-1]:
            outs.pop()
        name = ed.facts.fresh(f"{ed.base}/onnxfix_rewrite/{direction}")
        ed.copy(
            node,
            ins,
            outs,
            name=name,
            drop=("activations", "activation_alpha", "activation_beta"),
            direction="forward",
        )
        results.append(outs + [""] * (len(outputs) - len(outs)))
    if outputs[0]:
        backward = ed.op("Gather", [results[-1][0], rev], [outputs[0]] if not both else 1, axis=0)
        if both:
            ed.op("Concat", [results[0][0], backward], [outputs[0]], axis=1)
    if both:
        for j in range(1, len(outputs)):
            if outputs[j]:
                ed.op("Concat", [results[0][j], results[1][j]], [outputs[j]], axis=0)


def rewrite_recurrent(ed: Emitter, node: onnx.NodeProto) -> Outcome | None:
    op, attrs = node.op_type, attributes(node)
    direction = attrs.get("direction", "forward")
    why = _unsupported(op, attrs, 2 if direction == "bidirectional" else 1)
    if why:
        ed.skip("ORT's %s training kernel does not support %s", op, why)
        return None
    inputs = list(node.input) + [""] * (_INPUTS[op] - len(node.input))
    if inputs[4]:
        ed.skip("ORT's %s training kernel does not support sequence_lens", op)
        return None
    notes = []
    gate = _zero_gate(ed, inputs)
    if direction == "forward":
        if len(node.input) >= _INPUTS[op] and gate is None:
            return None
        ed.copy(node, inputs, list(node.output))
        if len(node.input) < _INPUTS[op]:
            notes.append(f"{op}: optional inputs listed up to {_INPUTS[op]} for ORT's {op}Grad")
    else:
        outputs = list(node.output) + [""] * (_OUTPUTS[op] - len(node.output))
        outputs = [o if ed.facts.is_used(o) else "" for o in outputs]
        if not any(outputs):
            ed.skip("no output is used")
            return None
        both = direction == "bidirectional"
        _split_directions(ed, node, inputs, outputs, both)
        notes.append(
            f"{op} {direction} -> "
            + (
                f"forward {op}s on the sequence and on it time-reversed, Concat"
                if both
                else f"a forward {op} on the time-reversed sequence"
            )
        )
    if gate:
        notes.append(gate)
    # ORT's LSTM kernel pre-packs constant W and R and multiplies computed ones unpacked, in
    # another summation order: when W or R now come out of a node (a direction's Gather, a
    # zero gate), the outputs match to ~1e-7 unless ORT folds that node (its default).
    if op == "LSTM" and (gate or direction == "bidirectional"):
        tolerance = "within 2e-7 of max|y| (bit-identical once ORT folds the weights)"
        return Outcome("; ".join(notes + [tolerance]), False)
    return Outcome("; ".join(notes) + "; bit-exact", True)


RECURRENT_REWRITES: dict[str, Callable[[Emitter, onnx.NodeProto], Outcome | None]] = {
    "LSTM": rewrite_recurrent,
    "GRU": rewrite_recurrent,
}

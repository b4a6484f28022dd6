"""Rewrite the nodes ONNX Runtime 1.19.2 cannot train on CPU into ones it can.

``rewrite_for_training`` is applied to the copy of a model that becomes the training and eval
graphs (the exported inference model keeps its original ops). Each node whose op has no
gradient builder (HardSwish, PRelu, ...), no CPU gradient kernel (Resize, ConvTranspose), a
wrong gradient (Split with an unused output, inference Dropout, tanh Gelu), a form the gradient
builder cannot read (LayerNormalization, LSTM/GRU) or a different training behaviour
(BatchNormalization switches to batch statistics) is replaced by nodes that compute the same
function with ops that have correct CPU gradients. The rewrites, and the measurements that show
them exact or how close they are, are in ``docs/ort-gradients.md``.

What a rewrite keeps: every initializer (name and values; a trainable one is still consumed by
the new nodes, so it still trains), the graph's inputs and outputs, and the replaced node's
output names. New nodes are named ``<node>/onnxfix_rewrite/<k>``; new constants are
``Constant`` nodes, not initializers. The only initializers a rewrite adds are trainable:
the zero gates of frozen LSTM/GRU weights, named ``onnxfix.zero_gate.<node>``
(:data:`ZERO_GATE_PREFIX`), listed in :attr:`Rewrite.parameters`.

Nodes a rewrite cannot handle (a dynamic shape where a static one is needed, attributes it
does not cover) are left as they are; the reason is logged at DEBUG level. Subgraphs (If,
Loop, Scan bodies) are not rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import onnx

from onnxfix.training.rewrites.convolution import CONVOLUTION_REWRITES
from onnxfix.training.rewrites.elementwise import ELEMENTWISE_REWRITES
from onnxfix.training.rewrites.emitter import Emitter
from onnxfix.training.rewrites.facts import GraphFacts
from onnxfix.training.rewrites.normalization import NORMALIZATION_REWRITES
from onnxfix.training.rewrites.recurrent import RECURRENT_REWRITES, ZERO_GATE_PREFIX
from onnxfix.training.rewrites.resampling import RESAMPLING_REWRITES
from onnxfix.training.rewrites.tensor import TENSOR_REWRITES

__all__ = ["Rewrite", "rewrite_for_training", "REWRITTEN_OPS", "ZERO_GATE_PREFIX"]

logger = logging.getLogger(__name__)

_REWRITES = {
    **CONVOLUTION_REWRITES,
    **ELEMENTWISE_REWRITES,
    **NORMALIZATION_REWRITES,
    **RESAMPLING_REWRITES,
    **RECURRENT_REWRITES,
    **TENSOR_REWRITES,
}

#: Op types (default ONNX domain) this module can rewrite, at least in some forms.
REWRITTEN_OPS: frozenset[str] = frozenset(_REWRITES)


@dataclass(frozen=True)
class Rewrite:
    """One node replaced for training."""

    op: str  # the original op type
    node: str  # the original node's name (or its first output when unnamed)
    description: str  # one line for the user
    exact: bool  # bit-identical outputs, rather than within a stated tolerance
    parameters: tuple[str, ...] = ()  # trainable initializers the rewrite added


def rewrite_for_training(
    model: onnx.ModelProto, frozen: AbstractSet[str] = frozenset()
) -> list[Rewrite]:
    """Rewrite, in place, every node of ``model``'s main graph whose gradient ORT 1.19.2 lacks
    on CPU, or computes wrongly, into ops that have correct CPU gradients.

    ``frozen`` names the parameters that will not train; an LSTM/GRU whose W or R is among them
    gets a zero gate (see :data:`ZERO_GATE_PREFIX`), whose new parameter must train. Nodes that
    cannot be rewritten are left as they are and not reported. Returns what was rewritten, in
    graph order.
    """
    graph = model.graph
    if not any(_rewriter(node) for node in graph.node):
        return []
    facts = GraphFacts(model, frozen)
    nodes: list[onnx.NodeProto] = []
    done: list[Rewrite] = []
    for node in graph.node:
        rewriter = _rewriter(node)
        outcome, emitter = None, None
        if rewriter is not None:
            emitter = Emitter(facts, node)
            outcome = rewriter(emitter, node)
        if outcome is None or emitter is None:
            nodes.append(node)
            continue
        nodes.extend(emitter.nodes)
        graph.initializer.extend(emitter.initializers)
        record = Rewrite(
            op=node.op_type,
            node=emitter.base,
            description=outcome.description,
            exact=outcome.exact,
            parameters=tuple(emitter.parameters),
        )
        logger.info("rewrote %s %r: %s", record.op, record.node, record.description)
        done.append(record)
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_stale_value_info(graph)
    return done


def _rewriter(node: onnx.NodeProto):
    if node.domain not in ("", "ai.onnx"):
        return None
    return _REWRITES.get(node.op_type)


def _drop_stale_value_info(graph: onnx.GraphProto) -> None:
    """Forget value_info of tensors no node produces any more (dropped optional outputs)."""
    produced = {o for n in graph.node for o in n.output}
    produced |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
    kept = [v for v in graph.value_info if v.name in produced]
    if len(kept) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept)

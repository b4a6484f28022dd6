"""How a training rewrite adds the nodes that replace one node (:class:`Emitter`).

Nodes are built in forms valid at the model's opset. New constants are ``Constant`` nodes,
never initializers, so nothing a rewrite adds looks like a parameter; the one exception is a
trainable parameter a rewrite needs (:meth:`Emitter.parameter`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxfix.training.rewrites.facts import GraphFacts

__all__ = ["Emitter", "Outcome"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a rewrite function did to its node (it returns None when it did nothing)."""

    description: str
    exact: bool


class Emitter:
    """Collects the nodes (and any new parameter) that replace one node.

    Nothing reaches the model until the rewrite function returns an :class:`Outcome`; a
    function that returns None (see :meth:`skip`) leaves the node as it was.
    """

    def __init__(self, facts: GraphFacts, node: onnx.NodeProto):
        self.facts = facts
        self.node = node
        self.base = node.name or node.output[0]
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.parameters: list[str] = []
        self._count = 0

    @property
    def opset(self) -> int:
        return self.facts.opset

    def skip(self, reason: str, *args: object) -> None:
        """Log why the node stays as it is (``reason`` % ``args``); the rewrite function then
        returns None."""
        logger.debug("%s %r left as it is: " + reason, self.node.op_type, self.base, *args)

    def _fresh(self) -> str:
        name = self.facts.fresh(f"{self.base}/onnxfix_rewrite/{self._count}")
        self._count += 1
        return name

    # ---- generic nodes -------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        *,
        name: str | None = None,
        **attrs: object,
    ) -> str:
        """Add a node; returns its first output (see :meth:`op_multi` for all of them).

        ``outputs``: the output names (e.g. the replaced node's own), or how many to name.
        """
        return self.op_multi(op_type, inputs, outputs, name=name, **attrs)[0]

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        *,
        name: str | None = None,
        **attrs: object,
    ) -> list[str]:
        node_name = name if name is not None else self._fresh()
        if isinstance(outputs, int):
            outputs = [node_name] if outputs == 1 else [f"{node_name}/{k}" for k in range(outputs)]
            self.facts.taken.update(outputs)
        node = helper.make_node(op_type, list(inputs), list(outputs), name=node_name)
        # As make_node(**attrs) would add them: sorted by name, the None ones left out.
        node.attribute.extend(
            helper.make_attribute(k, v) for k, v in sorted(attrs.items()) if v is not None
        )
        self.nodes.append(node)
        return list(outputs)

    def copy(
        self,
        node: onnx.NodeProto,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        name: str | None = None,
        drop: Iterable[str] = (),
        **attrs: object,
    ) -> onnx.NodeProto:
        """Add a copy of ``node`` with new inputs and outputs; attributes in ``drop`` removed,
        those in ``attrs`` set. Keeps the node's name unless ``name`` is given."""
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(inputs)
        del new.output[:]
        new.output.extend(outputs)
        new.name = name if name is not None else (node.name or self._fresh())
        removed = set(drop) | set(attrs)
        kept = [a for a in new.attribute if a.name not in removed]
        del new.attribute[:]
        new.attribute.extend(kept)
        new.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        self.nodes.append(new)
        return new

    def const(self, value: object, dtype: np.dtype | type | str) -> str:
        """A Constant node holding ``value`` (0-d for a Python scalar)."""
        array = np.asarray(value, dtype=dtype)
        name = self._fresh()
        self.nodes.append(
            helper.make_node(
                "Constant", [], [name], name=name, value=numpy_helper.from_array(array, name)
            )
        )
        return name

    def i64(self, values: object) -> str:
        return self.const(values, np.int64)

    def parameter(self, name: str, array: np.ndarray) -> str:
        """A new trainable initializer named exactly ``name`` (made unique if taken)."""
        name = self.facts.fresh(name)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.parameters.append(name)
        return name

    # ---- ops whose form depends on the opset ----------------------------------------------
    def unsqueeze(self, x: str, axes: Sequence[int], output: str | None = None) -> str:
        outs = [output] if output else 1
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.i64(list(axes))], outs)
        return self.op("Unsqueeze", [x], outs, axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int], output: str | None = None) -> str:
        outs = [output] if output else 1
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.i64(list(axes))], outs)
        return self.op("Squeeze", [x], outs, axes=list(axes))

    def clip(
        self, x: str, low: float, high: float, dtype: np.dtype, output: str | None = None
    ) -> str:
        outs = [output] if output else 1
        if self.opset >= 11:
            return self.op("Clip", [x, self.const(low, dtype), self.const(high, dtype)], outs)
        # Clip-6 keeps min/max in attributes, which ORT's Clip gradient ignores; Min/Max with
        # scalar constants (opset 8+) give the same values.
        t = self.op("Min", [x, self.const(high, dtype)])
        return self.op("Max", [t, self.const(low, dtype)], outs)

    def pad(self, x: str, pads: Sequence[int], output: str | None = None) -> str:
        """Constant (zero) padding; ``pads`` as in ONNX: all begins, then all ends."""
        outs = [output] if output else 1
        if self.opset >= 11:
            return self.op("Pad", [x, self.i64(list(pads))], outs)
        return self.op("Pad", [x], outs, pads=list(pads))

    def slice(
        self,
        x: str,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        output: str | None = None,
    ) -> str:
        outs = [output] if output else 1
        if self.opset >= 10:
            ins = [x, self.i64(list(starts)), self.i64(list(ends)), self.i64(list(axes))]
            return self.op("Slice", ins, outs)
        return self.op("Slice", [x], outs, starts=list(starts), ends=list(ends), axes=list(axes))

    def reshape(self, x: str, shape: Sequence[int] | str, output: str | None = None) -> str:
        """Reshape to constant dims, or to the shape held by the int64 tensor ``shape``."""
        target = shape if isinstance(shape, str) else self.i64(list(shape))
        return self.op("Reshape", [x, target], [output] if output else 1)

    def scaled_shape(self, x: str, factors: Sequence[int]) -> Sequence[int] | str:
        """``shape(x) * factors``: constant dims when x's shape is static, else computed."""
        static = self.facts.static_shape(x)
        if static is not None:
            return [d * f for d, f in zip(static, factors)]
        return self.op("Mul", [self.op("Shape", [x]), self.i64(list(factors))])

"""Output channels of conv weights and biases: the row view, and a tensor cut into two parts.

A conv's output channel ``o`` reads one slice of its weight. In the *row view* that slice is
row ``o``:

* Conv weights are ``(O, I/group, *k)``: the weight is its own row view;
* ConvTranspose weights are ``(I, O/group, *k)``: output channel ``g*O/group + j`` reads rows
  ``g*I/group ...`` of column ``j``; the row view ``(O, I/group, *k)`` regroups them;
* biases are ``(O,)``: their own row view.

A tensor with some channels fixed (``set-kernel --channels``) trains as two parameters, the
fixed rows (frozen) and the other rows (trainable), each in row-view order;
:class:`ChannelParts` says which rows go where and puts the tensor back together.
NumPy only: provenance, set-kernel, the training graph and export all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["rows_view", "from_rows_view", "channel_ranges", "ChannelParts"]


def _transposed(op: str, role: str) -> bool:
    return op == "ConvTranspose" and role == "weight"


def rows_view(values: np.ndarray, *, op: str, role: str, group: int = 1) -> np.ndarray:
    """``values`` with output channel ``o`` as row ``o`` (a copy for ConvTranspose weights)."""
    if not _transposed(op, role):
        return values
    cin, cout_g = values.shape[:2]
    spatial = values.shape[2:]
    w = values.reshape(group, cin // group, cout_g, *spatial)
    w = np.swapaxes(w, 1, 2)  # (g, O/g, I/g, *k)
    return w.reshape(group * cout_g, cin // group, *spatial)


def from_rows_view(
    rows: np.ndarray, shape: Sequence[int], *, op: str, role: str, group: int = 1
) -> np.ndarray:
    """The tensor of ``shape`` whose row view is ``rows`` (C order)."""
    if not _transposed(op, role):
        return np.ascontiguousarray(rows.reshape(tuple(shape)))
    cin, cout_g = shape[:2]
    spatial = tuple(shape[2:])
    w = rows.reshape(group, cout_g, cin // group, *spatial)
    w = np.swapaxes(w, 1, 2)
    return np.ascontiguousarray(w.reshape(tuple(shape)))


def channel_ranges(channels: Iterable[int]) -> str:
    """``0-15`` or ``0-3, 8, 10-11``: sorted channel indices as ranges."""
    ordered = sorted(set(channels))
    runs: list[str] = []
    start = prev = None
    for c in ordered + [None]:
        if prev is not None and c == prev + 1:
            prev = c
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ", ".join(runs)


@dataclass(frozen=True)
class ChannelParts:
    """How tensor ``name`` trains when only some of its output channels are fixed.

    ``fixed_name`` holds rows ``fixed`` of the row view (frozen), ``train_name`` the other
    rows (trainable), both in ascending channel order.
    """

    name: str
    fixed_name: str
    train_name: str
    shape: tuple[int, ...]  # the whole tensor's
    fixed: tuple[int, ...]  # ascending
    op: str  # Conv or ConvTranspose
    role: str  # weight or bias
    group: int = 1

    def __post_init__(self) -> None:
        # Records come from files (onnxfix.json, checkpoint properties): check what indexing
        # and reshaping will rely on, so a hostile one is refused, not mis-joined.
        rank = 1 if self.role == "bias" else 3
        if self.role not in ("weight", "bias") or len(self.shape) < rank or self.group < 1:
            raise ValueError(f"channel parts of {self.name!r}: shape {list(self.shape)}")
        if _transposed(self.op, self.role) and self.shape[0] % self.group:
            raise ValueError(f"channel parts of {self.name!r}: {self.group} groups")
        if not self.fixed or list(self.fixed) != sorted(set(self.fixed)):
            raise ValueError(f"channel parts of {self.name!r}: fixed channels not ascending")
        if self.fixed[0] < 0 or self.fixed[-1] >= self.channels or not self.trained:
            raise ValueError(f"channel parts of {self.name!r}: fixed channels out of range or all")

    @property
    def channels(self) -> int:
        if _transposed(self.op, self.role):
            return self.shape[1] * self.group
        return self.shape[0]

    @property
    def trained(self) -> tuple[int, ...]:
        fixed = set(self.fixed)
        return tuple(c for c in range(self.channels) if c not in fixed)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row of the view."""
        if _transposed(self.op, self.role):
            return (self.shape[0] // self.group, *self.shape[2:])
        return tuple(self.shape[1:])

    def order(self) -> np.ndarray:
        """Row ``o`` of the tensor is row ``order()[o]`` of the fixed rows followed by the
        trained rows: the indices a Gather takes to put the two parts back in place."""
        position = np.empty(self.channels, dtype=np.int64)
        position[list(self.fixed)] = np.arange(len(self.fixed))
        position[list(self.trained)] = len(self.fixed) + np.arange(len(self.trained))
        return position

    def split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fixed rows and the trained rows of ``values`` (copies)."""
        rows = rows_view(values, op=self.op, role=self.role, group=self.group)
        return (
            np.ascontiguousarray(rows[list(self.fixed)]),
            np.ascontiguousarray(rows[list(self.trained)]),
        )

    def join(self, fixed: np.ndarray, trained: np.ndarray) -> np.ndarray:
        """The whole tensor from its two parts."""
        rows = np.concatenate([fixed, trained])[self.order()]
        return from_rows_view(rows, self.shape, op=self.op, role=self.role, group=self.group)

    def describe(self, trains: bool = True) -> str:
        """``fixed channels 0-15 of conv1.weight, channels 16-63 train`` (``... are frozen``
        when the trained part does not train: ``--freeze``, a blocked gradient)."""
        return (
            f"fixed channels {channel_ranges(self.fixed)} of {self.name}, channels "
            f"{channel_ranges(self.trained)} {'train' if trains else 'are frozen'}"
        )

    def to_json(self) -> dict:
        return {
            "fixed": self.fixed_name,
            "train": self.train_name,
            "shape": list(self.shape),
            "fixed_channels": list(self.fixed),
            "op": self.op,
            "role": self.role,
            "group": self.group,
        }

    @classmethod
    def from_json(cls, name: str, obj: dict) -> ChannelParts:
        return cls(
            name=name,
            fixed_name=str(obj["fixed"]),
            train_name=str(obj["train"]),
            shape=tuple(int(d) for d in obj["shape"]),
            fixed=tuple(int(c) for c in obj["fixed_channels"]),
            op=str(obj["op"]),
            role=str(obj["role"]),
            group=int(obj.get("group", 1)),
        )

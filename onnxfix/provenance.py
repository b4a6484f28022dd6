"""The record of what onnxfix fixed: ``metadata_props["onnxfix.fixed_kernels"]``.

In memory, one :class:`FixedTensor` per fixed tensor, keyed by the tensor's name
(:data:`Provenance`). On disk (model metadata, checkpoint property, ``onnxfix.json``), a JSON
object mapping each name to ``{"layer", "op", "role", "kernel", "channels", "shape", "dtype",
"sha256"}`` and, for small tensors, ``"values_b64"``; JSON is made and read only here
(:meth:`FixedTensor.to_json`, :func:`parse_provenance`). ``make-artifacts`` freezes exactly
these tensors and ``verify`` recomputes their hashes.

Records written by onnxfix 0.1.0 read the same, with one repair: 0.1.0 copied a weight's
record into its bias's, so a bias fixed with ``--bias`` carries the weight's ``values_b64``.
Values whose size does not fit the record's shape and dtype are dropped when read: the hash
still proves the tensor, and ``verify`` reports a change without a difference.

A tensor of which ``set-kernel --channels`` fixed only some output channels records them in
``"fixed_channels"`` (ascending); its hash, values and ``"channel_sha256"`` (one per fixed
channel) cover those channels' rows of the row view (:mod:`onnxfix.channels`) only, since the
other channels train. Records without ``"fixed_channels"`` (all of 0.1.0's) fix the whole
tensor.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxfix.channels import ChannelParts, channel_ranges, rows_view
from onnxfix.dtypes import from_le_bytes, le_bytes, np_dtype
from onnxfix.errors import ProvenanceError

__all__ = [
    "PROVENANCE_KEY",
    "FixedTensor",
    "Provenance",
    "tensor_digest",
    "check_intact",
    "read_provenance",
    "parse_provenance",
    "dump_provenance",
    "write_provenance",
]

PROVENANCE_KEY = "onnxfix.fixed_kernels"

# Kernels up to this size are recorded by value as well as by hash, so verify can say how far
# a changed one moved.
VALUES_LIMIT = 256 << 10


@dataclass(frozen=True)
class FixedTensor:
    """One fixed tensor: which layer, what was put in, and the proof (its SHA-256)."""

    layer: str  # the conv's display name
    op: str  # Conv or ConvTranspose
    role: str  # "weight" or "bias"
    kernel: str  # the spec as the user gave it (``sobel-x``, ``--bias zero``...)
    channels: str | None  # the --channels text, or None for the whole tensor
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    sha256: str
    values_b64: str | None = None  # the fixed values, up to VALUES_LIMIT bytes
    shared_by: tuple[str, ...] = ()  # the other layers that read it (--all-uses)
    fixed_channels: tuple[int, ...] | None = None  # ascending; None: the whole tensor is fixed
    group: int = 1  # the conv's groups (a ConvTranspose weight's channels depend on it)
    channel_sha256: tuple[str, ...] = ()  # one per fixed channel, with fixed_channels

    @property
    def channel_count(self) -> int:
        """The conv's output channels, as this tensor's shape says."""
        if self.op == "ConvTranspose" and self.role == "weight":
            return self.shape[1] * self.group
        return self.shape[0]

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """The shape of what is fixed: the whole tensor, or its fixed rows of the row view."""
        if self.fixed_channels is None:
            return self.shape
        return (len(self.fixed_channels), *self.parts("", "").row_shape)

    def fixed_values(self, values: np.ndarray) -> np.ndarray:
        """What of ``values`` (the whole tensor) this record fixes."""
        if self.fixed_channels is None:
            return values
        rows = rows_view(values, op=self.op, role=self.role, group=self.group)
        return rows[list(self.fixed_channels)]

    def digest(self, values: np.ndarray) -> str:
        """The SHA-256 this record expects of ``values`` (the whole tensor) when intact."""
        return tensor_digest(self.fixed_values(values))

    def changed_channels(self, rows: np.ndarray) -> list[int]:
        """The fixed channels whose values differ from the record, given the fixed rows
        (:meth:`fixed_values`, or the frozen part a checkpoint holds); [] for whole tensors."""
        if self.fixed_channels is None:
            return []
        return [
            c
            for c, row, digest in zip(self.fixed_channels, rows, self.channel_sha256)
            if tensor_digest(row) != digest
        ]

    def parts(self, fixed_name: str, train_name: str) -> ChannelParts:
        """How the tensor trains as two parameters (only for records with fixed_channels)."""
        assert self.fixed_channels is not None
        return ChannelParts(
            name="",
            fixed_name=fixed_name,
            train_name=train_name,
            shape=self.shape,
            fixed=self.fixed_channels,
            op=self.op,
            role=self.role,
            group=self.group,
        )

    def describe_channels(self) -> str:
        """``channels 0-15`` or ``all channels``."""
        if self.fixed_channels is None:
            return "all channels"
        return f"channels {channel_ranges(self.fixed_channels)}"

    @classmethod
    def of(
        cls,
        values: np.ndarray,
        *,
        layer: str,
        op: str,
        role: str,
        kernel: str,
        channels: str | None = None,
        shared_by: tuple[str, ...] = (),
        fixed_channels: tuple[int, ...] | None = None,
        group: int = 1,
    ) -> FixedTensor:
        """The record of ``values``, the tensor as it is stored; with ``fixed_channels``, of
        those output channels only (the record of a tensor whose other channels train)."""
        digests: tuple[str, ...] = ()
        fixed = values
        if fixed_channels is not None and len(set(fixed_channels)) == (
            values.shape[1] * group if op == "ConvTranspose" and role == "weight" else len(values)
        ):
            fixed_channels = None  # every channel: the whole tensor
        if fixed_channels is not None:
            fixed_channels = tuple(sorted(int(c) for c in fixed_channels))
            fixed = rows_view(values, op=op, role=role, group=group)[list(fixed_channels)]
            digests = tuple(tensor_digest(row) for row in fixed)
        data = le_bytes(fixed)
        return cls(
            layer=layer,
            op=op,
            role=role,
            kernel=kernel,
            channels=channels,
            shape=tuple(int(d) for d in values.shape),
            dtype=values.dtype.name,
            sha256=hashlib.sha256(data).hexdigest(),
            values_b64=(
                base64.b64encode(data).decode("ascii") if len(data) <= VALUES_LIMIT else None
            ),
            shared_by=shared_by,
            fixed_channels=fixed_channels,
            group=group,
            channel_sha256=digests,
        )

    def values(self) -> np.ndarray | None:
        """The recorded values (of :attr:`fixed_shape`), or None when the record holds none."""
        if self.values_b64 is None:
            return None
        return from_le_bytes(
            base64.b64decode(self.values_b64), np_dtype(self.dtype), self.fixed_shape
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "op": self.op,
            "role": self.role,
            "kernel": self.kernel,
            "channels": self.channels,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "sha256": self.sha256,
        }
        if self.values_b64 is not None:
            out["values_b64"] = self.values_b64
        if self.shared_by:
            out["shared_by"] = list(self.shared_by)
        if self.fixed_channels is not None:
            out["fixed_channels"] = list(self.fixed_channels)
            out["channel_sha256"] = list(self.channel_sha256)
        if self.group != 1:
            out["group"] = self.group
        return out

    @classmethod
    def from_json(cls, name: str, obj: object, *, source: str) -> FixedTensor:
        """The record of tensor ``name`` from its JSON form, checked field by field."""

        def bad(what: str) -> ProvenanceError:
            return ProvenanceError(
                f"{source}: the {PROVENANCE_KEY!r} record of {name!r} {what}; re-run set-kernel "
                "on the original model"
            )

        if not isinstance(obj, dict):
            raise bad("is not an object")
        sha = obj.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or not _is_hex(sha):
            raise bad("has no 'sha256' of 64 hex digits")
        dtype = obj.get("dtype", "float32")
        try:
            itemsize = np_dtype(dtype).itemsize if isinstance(dtype, str) else None
        except (KeyError, TypeError):
            itemsize = None
        if itemsize is None:
            raise bad(f"has dtype {dtype!r}, not a numeric dtype name such as 'float32'")
        shape = obj.get("shape", [])
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
        ):
            raise bad(f"has shape {shape!r}, not a list of sizes")
        if len(shape) > 32 or math.prod(shape) >= 2**40:  # no kernel is that large
            raise bad(f"has shape {shape!r}, larger than any tensor (2^40 elements, 32 axes)")
        texts = {}
        for key in ("layer", "op", "role", "kernel"):
            value = obj.get(key, "?")
            if not _is_text(value):
                raise bad(f"has a {key} that is not a string")
            texts[key] = value
        channels = obj.get("channels")
        if channels is not None and not isinstance(channels, str):
            channels = str(channels)
        if channels is not None and not _is_text(channels):
            raise bad("has a 'channels' that is not a string")
        shared = obj.get("shared_by", [])
        if not isinstance(shared, list) or not all(_is_text(s) for s in shared):
            raise bad("has a 'shared_by' that is not a list of layer names")
        entry = cls(
            shape=tuple(shape),
            dtype=dtype,
            sha256=sha,
            channels=channels,
            shared_by=tuple(shared),
            **texts,
        )
        entry = _with_channels(entry, obj, bad)
        values = _values_that_fit(obj.get("values_b64"), list(entry.fixed_shape), itemsize)
        return dataclasses.replace(entry, values_b64=values)


def _is_count(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < high


def _with_channels(
    entry: FixedTensor, obj: dict, bad: Callable[[str], ProvenanceError]
) -> FixedTensor:
    """``entry`` with the record's ``group``, ``fixed_channels`` and ``channel_sha256``,
    each checked against the tensor's shape."""
    group = obj.get("group", 1)
    if not _is_count(group, 1, 2**31):
        raise bad(f"has group {group!r}, not a whole number from 1")
    transposed = entry.op == "ConvTranspose" and entry.role == "weight"
    rank = 1 if entry.role == "bias" else 3
    if "fixed_channels" not in obj:
        return dataclasses.replace(entry, group=group)
    if len(entry.shape) < rank or (transposed and entry.shape[0] % group):
        raise bad(
            f"fixes channels of a tensor of shape {list(entry.shape)}, which is not a "
            f"{entry.op} {entry.role} in {group} groups"
        )
    entry = dataclasses.replace(entry, group=group)
    count = entry.channel_count
    channels = obj["fixed_channels"]
    if (
        not isinstance(channels, list)
        or not channels
        or not all(_is_count(c, 0, count) for c in channels)
        or channels != sorted(set(channels))
        or len(channels) == count
    ):
        raise bad(
            f"has 'fixed_channels' that are not ascending channel numbers from 0 to {count - 1} "
            "(some, not all)"
        )
    digests = obj.get("channel_sha256")
    if (
        not isinstance(digests, list)
        or len(digests) != len(channels)
        or not all(isinstance(d, str) and len(d) == 64 and _is_hex(d) for d in digests)
    ):
        raise bad("has no 'channel_sha256' of 64 hex digits for each fixed channel")
    return dataclasses.replace(entry, fixed_channels=tuple(channels), channel_sha256=tuple(digests))


# Tensor name -> its record.
Provenance = dict[str, FixedTensor]


def _is_text(value: object) -> bool:
    """A string that can be printed and written back: JSON's \\ud800 escapes decode to lone
    surrogates, which no output stream encodes."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _values_that_fit(data: object, shape: list[int], itemsize: int) -> str | None:
    """``data`` when it is base64 of exactly the record's size, else None (see the module's
    docstring: 0.1.0 gave a bias its weight's values)."""
    if not isinstance(data, str):
        return None
    expected = math.prod(shape) * itemsize
    if len(data) != 4 * ((expected + 2) // 3):  # base64's length, checked before decoding
        return None
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if len(decoded) == expected else None


def tensor_digest(array: np.ndarray) -> str:
    """SHA-256 of the tensor's bytes as ONNX stores them (C order, little-endian)."""
    return hashlib.sha256(le_bytes(array)).hexdigest()


def check_intact(
    record: Mapping[str, FixedTensor],
    read: Callable[[str], np.ndarray | None],
    *,
    model: str,
) -> None:
    """Refuse ``model`` when a fixed tensor's bytes no longer hash to its record.

    ``read(name)`` gives the tensor's values as stored (None when the model has no such
    initializer: nothing to compare). A mismatch means the model was edited after set-kernel:
    freezing it would keep, and the self-test certify, values nobody chose.
    """
    for name, entry in record.items():
        values = read(name)
        if values is None:
            continue
        actual = entry.digest(values)
        if actual != entry.sha256:
            raise ProvenanceError(
                f"fixed kernel {name!r} no longer matches its record (sha256 "
                f"{entry.sha256[:16]} recorded, {actual[:16]} now): the model was changed after "
                f"set-kernel; run onnxfix verify {shlex.quote(model)} to see the difference, "
                "or set the kernel again"
            )


def read_provenance(model: onnx.ModelProto, *, source: str = "the model") -> Provenance:
    """The fixed-tensor records of ``model`` ({} when onnxfix has fixed nothing in it)."""
    for prop in model.metadata_props:
        if prop.key == PROVENANCE_KEY:
            return parse_provenance(prop.value, source=source)
    return {}


def parse_provenance(text: str | bytes, *, source: str) -> Provenance:
    """The records in ``text``, the JSON form; ``source`` names where it came from.

    ``text`` may be bytes: protobuf hands a metadata value that is not UTF-8 over as bytes.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        record = json.loads(text)
    except (ValueError, RecursionError) as e:
        if isinstance(e, json.JSONDecodeError):
            why = e.msg
        elif isinstance(e, UnicodeDecodeError):
            why = f"byte {e.start} is not UTF-8"
        elif isinstance(e, RecursionError):
            why = "nested too deep"
        else:  # int(): a number of more digits than Python converts
            why = "a number too long to read"
        raise ProvenanceError(
            f"{source}: the {PROVENANCE_KEY!r} record is not valid JSON ({why}); "
            "re-run set-kernel on the original model"
        ) from e
    if not isinstance(record, dict):
        raise ProvenanceError(
            f"{source}: the {PROVENANCE_KEY!r} record must map tensor names to objects with a "
            "'sha256'; re-run set-kernel on the original model"
        )
    for name in record:
        if not _is_text(name):
            raise ProvenanceError(
                f"{source}: the {PROVENANCE_KEY!r} record names a tensor {name!r} that is not "
                "valid text; re-run set-kernel on the original model"
            )
    return {name: FixedTensor.from_json(name, obj, source=source) for name, obj in record.items()}


def dump_provenance(record: Mapping[str, FixedTensor]) -> str:
    """The JSON form of ``record``, keys sorted, as stored in model metadata."""
    return json.dumps(
        {name: entry.to_json() for name, entry in record.items()},
        sort_keys=True,
        separators=(",", ":"),
    )


def write_provenance(model: onnx.ModelProto, record: Mapping[str, FixedTensor]) -> None:
    """Set (or replace) the record in ``model.metadata_props``, keeping every other entry."""
    text = dump_provenance(record)
    for prop in model.metadata_props:
        if prop.key == PROVENANCE_KEY:
            prop.value = text
            return
    model.metadata_props.add(key=PROVENANCE_KEY, value=text)

"""The record of what onnxfix fixed: ``metadata_props["onnxfix.fixed_kernels"]``.

A JSON object mapping each fixed tensor's name to ``{"layer", "op", "role", "kernel",
"channels", "shape", "dtype", "sha256"}``. ``make-artifacts`` freezes exactly these tensors
and ``verify`` recomputes their hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from onnxfix.errors import ProvenanceError

__all__ = ["PROVENANCE_KEY", "FixedTensor", "tensor_digest", "read_provenance", "write_provenance"]

PROVENANCE_KEY = "onnxfix.fixed_kernels"
FixedTensor = dict  # one record: layer, op, role, kernel, channels, shape, dtype, sha256


def tensor_digest(array: np.ndarray) -> str:
    """SHA-256 of the tensor's bytes as ONNX stores them (C order, little-endian)."""
    data = np.ascontiguousarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return hashlib.sha256(data.tobytes()).hexdigest()


def read_provenance(model: onnx.ModelProto, *, source: str = "the model") -> dict[str, FixedTensor]:
    """The fixed-tensor records of ``model`` ({} when onnxfix has fixed nothing in it)."""
    for prop in model.metadata_props:
        if prop.key == PROVENANCE_KEY:
            return parse_provenance(prop.value, source=source)
    return {}


def parse_provenance(text: str, *, source: str) -> dict[str, FixedTensor]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProvenanceError(
            f"{source}: the {PROVENANCE_KEY!r} record is not valid JSON ({e.msg}); "
            "re-run set-kernel on the original model"
        ) from e
    if not isinstance(record, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in record.values()
    ):
        raise ProvenanceError(
            f"{source}: the {PROVENANCE_KEY!r} record must map tensor names to objects with a "
            "'sha256'; re-run set-kernel on the original model"
        )
    return record


def dump_provenance(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def write_provenance(model: onnx.ModelProto, record: Mapping[str, FixedTensor]) -> None:
    """Set (or replace) the record in ``model.metadata_props``, keeping every other entry."""
    text = dump_provenance(record)
    for prop in model.metadata_props:
        if prop.key == PROVENANCE_KEY:
            prop.value = text
            return
    model.metadata_props.add(key=PROVENANCE_KEY, value=text)

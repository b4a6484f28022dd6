"""The few pieces of the protobuf wire format that the streaming reader and writer share.

Field numbers from ``onnx.proto`` (ModelProto.graph, GraphProto.initializer, TensorProto's
name, raw_data, external_data and data_location) and the encoding of a length-delimited
field's header. See :mod:`onnxfix.modelio.reader` for what the reader relies on.
"""

from __future__ import annotations

__all__ = [
    "GRAPH",
    "INITIALIZER",
    "NAME",
    "RAW_DATA",
    "EXTERNAL_DATA",
    "DATA_LOCATION",
    "EXTERNAL",
    "LEN",
    "varint_bytes",
    "len_field",
]

GRAPH = 7  # ModelProto.graph
INITIALIZER = 5  # GraphProto.initializer
NAME, RAW_DATA, EXTERNAL_DATA, DATA_LOCATION = 8, 9, 13, 14  # TensorProto fields
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
LEN = 2  # wire type of length-delimited fields


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def len_field(number: int, body_length: int) -> bytes:
    """Tag and length prefix of a length-delimited field."""
    return varint_bytes(number << 3 | LEN) + varint_bytes(body_length)

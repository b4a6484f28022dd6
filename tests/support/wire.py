"""Protobuf wire-format pieces: encoded fields, each field of a message alone, unknown fields."""

from __future__ import annotations

import onnx


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, wire_type: int, value: bytes | int) -> bytes:
    """One encoded field; value is the payload for LEN, fixed32/64 bytes, or an int varint."""
    tag = varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + varint(value)
    if wire_type == 2:
        return tag + varint(len(value)) + value
    return tag + value


def each_field(message) -> dict[str, bytes]:
    """The encoding of each set field of ``message`` on its own, by field name."""
    out = {}
    for descriptor, value in message.ListFields():
        alone = type(message)()
        if descriptor.is_repeated:
            getattr(alone, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(alone, descriptor.name).CopyFrom(value)
        else:
            setattr(alone, descriptor.name, value)
        out[descriptor.name] = alone.SerializeToString()
    return out


# Unknown fields of every wire type that a reader must step over and keep.
UNKNOWN = (
    field(1000, 0, 2**64 - 1)  # a 10-byte varint
    + field(1001, 1, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    + field(1002, 2, b"unknown bytes")
    + field(1003, 5, b"\xaa\xbb\xcc\xdd")
)


def with_unknown_fields(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with unknown fields of every wire type in the model, graph and two tensors."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.MergeFromString(UNKNOWN)
    model.graph.MergeFromString(UNKNOWN)
    model.graph.initializer[0].MergeFromString(UNKNOWN)  # big: made light
    model.graph.initializer[1].MergeFromString(UNKNOWN)  # small: stays inline
    return model

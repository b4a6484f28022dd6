"""onnxfix.modelio.reader: light reads and spliced writes give exactly what onnx.load and onnx.save do."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from onnxfix.errors import ModelFileError
from onnxfix.modelio import filecopy, reader, writer
from onnxfix.modelio.reader import Splice, read_light_model, read_payload
from onnxfix.modelio.writer import write_model
from tests.support.factories import rich_model
from tests.support.wire import UNKNOWN, each_field, field, with_unknown_fields

# ----------------------------------------------------------------------------- files


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- checks


def loaded(path: Path) -> bytes:
    return onnx.load(path).SerializeToString()


def assert_round_trip(src: Path, tmp_path: Path, *, min_payload: int = 1024) -> dict[str, Splice]:
    """Light read then unchanged write: same model and byte-identical initializers as onnx.load."""
    expected = onnx.load(src)
    light, splices = read_light_model(src, min_payload=min_payload)
    first = {}  # index of the first tensor of each name: the one the reader can make light
    for i, t in enumerate(expected.graph.initializer):
        first.setdefault(t.name, i)
    originals = {name: expected.graph.initializer[i] for name, i in first.items()}
    for name, splice in splices.items():
        original = originals[name]
        assert len(original.raw_data) >= min_payload
        assert read_payload(src, splice) == original.raw_data
        assert src.read_bytes()[splice.offset : splice.offset + splice.length] == original.raw_data
    assert len(light.graph.initializer) == len(expected.graph.initializer)
    for i, (light_tensor, original) in enumerate(
        zip(light.graph.initializer, expected.graph.initializer)
    ):
        bare = onnx.TensorProto()
        bare.CopyFrom(original)
        if original.name in splices and first[original.name] == i:
            assert light_tensor.HasField("raw_data") and light_tensor.raw_data == b""
            bare.raw_data = b""
        assert light_tensor.SerializeToString() == bare.SerializeToString()
    before = light.SerializeToString()
    out = tmp_path / "out.onnx"
    write_model(light, splices, src, out)
    assert light.SerializeToString() == before, "write_model changed the model it was given"
    got = onnx.load(out)
    assert got.SerializeToString() == expected.SerializeToString()
    assert len(got.graph.initializer) == len(expected.graph.initializer)
    for a, b in zip(got.graph.initializer, expected.graph.initializer):
        assert a.name == b.name and a.raw_data == b.raw_data
        assert a.SerializeToString() == b.SerializeToString()
    assert out.stat().st_size == len(expected.SerializeToString())
    payload = sum(len(originals[name].raw_data) for name in splices)
    assert len(before) <= src.stat().st_size - payload
    return splices


# ----------------------------------------------------------------------------- round trips


def test_rich_model_round_trips_and_only_large_raw_payloads_are_light(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    splices = assert_round_trip(src, tmp_path)
    assert sorted(splices) == ["big_int64", "conv1.weight", "conv2.weight", "conv3.weight"]
    assert splices["conv2.weight"].length == 16 * 16 * 9 * 4


def test_min_payload_zero_makes_even_empty_tensors_light(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    splices = assert_round_trip(src, tmp_path, min_payload=0)
    assert splices["empty"].length == 0
    assert "typed_floats" not in splices and "typed_int64" not in splices
    assert "then.w" not in splices  # subgraph initializers are not top-level


def test_huge_min_payload_leaves_the_model_whole(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    assert assert_round_trip(src, tmp_path, min_payload=1 << 30) == {}


def test_unknown_fields_survive_at_every_level(tmp_path):
    model = with_unknown_fields(rich_model())
    src = save(model, tmp_path / "unknown.onnx")
    assert_round_trip(src, tmp_path)
    again = onnx.load(tmp_path / "out.onnx")
    assert UNKNOWN in again.graph.initializer[0].SerializeToString()
    assert UNKNOWN in again.graph.SerializeToString()


@pytest.mark.parametrize("unknown", [False, True], ids=["plain", "unknown-fields"])
def test_unchanged_model_written_by_onnx_save_comes_back_byte_for_byte(tmp_path, unknown):
    model = with_unknown_fields(rich_model()) if unknown else rich_model()
    src = save(model, tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    write_model(light, splices, src, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == src.read_bytes()


def test_changes_after_the_payloads_keep_their_offsets(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    weight = next(t for t in light.graph.initializer if t.name == "conv1.weight")
    weight.raw_data = np.ones((16, 3, 3, 3), np.float32).tobytes()  # same size
    del splices["conv1.weight"]
    helper.set_model_props(light, {"onnxfix.fixed_kernels": '{"conv1": "ones"}'})  # field 14
    write_model(light, splices, src, tmp_path / "out.onnx")
    _, written = read_light_model(tmp_path / "out.onnx")
    assert written.pop("conv1.weight").offset < min(s.offset for s in splices.values())
    assert written == splices


def test_congruent_copies_start_a_kernel_call_at_the_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(filecopy, "_ALIGN", 4096)
    calls = []
    real = os.copy_file_range

    def spy(src, dst, count, offset_src, offset_dst):
        calls.append((offset_src, offset_dst, count))
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", spy)
    src = write_bytes(tmp_path / "src.bin", bytes(range(256)) * 64)  # 16 KiB
    with open(src, "rb") as a, open(tmp_path / "dst.bin", "wb") as b:
        filecopy.copy_range(a.fileno(), b.fileno(), 100, 10000, 8292, src)  # 8292 = 2 * 4096 + 100
        filecopy.copy_range(a.fileno(), b.fileno(), 100, 3000, 101, src)  # not congruent
    assert calls[:2] == [(100, 8292, 3996), (4096, 12288, 6004)]
    assert calls[2:] == [(100, 101, 3000)]
    data = (tmp_path / "dst.bin").read_bytes()
    assert data[8292:18292] == src.read_bytes()[100:10100]
    assert data[101:3101] == src.read_bytes()[100:3100]


def test_known_field_numbers_with_other_wire_types_are_unknown_fields(tmp_path):
    model = rich_model()
    model.MergeFromString(field(7, 0, 5))  # "graph" as a varint
    model.graph.MergeFromString(field(5, 5, b"abcd"))  # "initializer" as fixed32
    # In a large tensor: "name" as fixed64, "raw_data" as varint; protobuf keeps both as unknown.
    model.graph.initializer[2].MergeFromString(field(8, 1, b"12345678") + field(9, 0, 3))
    src = save(model, tmp_path / "mistyped.onnx")
    assert onnx.load(src).graph.initializer[2].name == "conv2.weight"
    splices = assert_round_trip(src, tmp_path)
    assert splices["conv2.weight"].length == 16 * 16 * 9 * 4


def test_replacing_one_kernel_matches_onnx_load_modify_save(tmp_path):
    src = save(with_unknown_fields(rich_model()), tmp_path / "rich.onnx")
    kernel = np.arange(16 * 16 * 9, dtype=np.float32).reshape(16, 16, 3, 3)

    expected = onnx.load(src)
    next(
        t for t in expected.graph.initializer if t.name == "conv2.weight"
    ).raw_data = kernel.tobytes()

    light, splices = read_light_model(src)
    next(t for t in light.graph.initializer if t.name == "conv2.weight").raw_data = kernel.tobytes()
    del splices["conv2.weight"]
    write_model(light, splices, src, tmp_path / "out.onnx")

    got = onnx.load(tmp_path / "out.onnx")
    assert got.SerializeToString() == expected.SerializeToString()
    weight = next(t for t in got.graph.initializer if t.name == "conv2.weight")
    np.testing.assert_array_equal(numpy_helper.to_array(weight), kernel)
    onnx.checker.check_model(got)


@pytest.mark.parametrize("change", ["same size", "shorter", "payloads move"])
def test_writing_over_a_copy_made_ahead_gives_the_same_bytes(tmp_path, change):
    src = save(with_unknown_fields(rich_model()), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    tensor = next(t for t in light.graph.initializer if t.name == "conv2.weight")
    size = {"same size": 16 * 16 * 9, "shorter": 16 * 16, "payloads move": 16 * 16 * 9}[change]
    tensor.raw_data = np.arange(size, dtype=np.float32).tobytes()
    del splices["conv2.weight"]
    if change == "payloads move":
        light.doc_string = "x" * 5000  # written before the graph: every payload moves
    write_model(light, splices, src, tmp_path / "fresh.onnx")
    ahead = tmp_path / "ahead.onnx"
    ahead.write_bytes(src.read_bytes())
    write_model(light, splices, src, ahead, copied=True)
    assert ahead.read_bytes() == (tmp_path / "fresh.onnx").read_bytes()


def test_first_external_location_names_the_data_file_or_none(tmp_path):
    model = rich_model()
    embedded = save(model, tmp_path / "embedded.onnx")
    onnx.save(model, tmp_path / "external.onnx", save_as_external_data=True, location="w.bin")
    assert reader.first_external_location(embedded) is None
    assert reader.first_external_location(tmp_path / "external.onnx") == "w.bin"
    assert reader.first_external_location(write_bytes(tmp_path / "junk.onnx", b"\xff" * 9)) is None


# ----------------------------------------------------------------------------- hand-made layouts


def test_graph_field_first_and_model_fields_in_reverse_order(tmp_path):
    fields = each_field(rich_model())
    assert list(fields)[-1] != "graph"  # onnx writes opset_import, metadata_props after it
    data = b"".join(reversed(fields.values()))
    assert data.index(fields["graph"]) > 0 and not data.endswith(fields["graph"])
    assert_round_trip(write_bytes(tmp_path / "reordered.onnx", data), tmp_path)


def test_raw_data_before_name_with_unknown_fields_between(tmp_path):
    model = rich_model()
    tensor = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    parts = each_field(tensor)
    crafted = parts.pop("raw_data") + UNKNOWN + b"".join(reversed(parts.values()))
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    graph.ClearField("initializer")
    graph_bytes = field(5, 2, crafted) + graph.SerializeToString()
    graph_bytes += b"".join(
        field(5, 2, t.SerializeToString()) for t in model.graph.initializer if t is not tensor
    )
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    src = write_bytes(
        tmp_path / "crafted.onnx", field(7, 2, graph_bytes) + head.SerializeToString()
    )
    splices = assert_round_trip(src, tmp_path)
    assert "conv2.weight" in splices
    assert src.read_bytes().index(tensor.raw_data) == splices["conv2.weight"].offset


@pytest.mark.parametrize(
    "sizes",
    [(4096, 3000), (5, 3000), (4096, 7), (2000, 3000, 5, 1500)],
    ids=["big-big", "small-big", "big-small", "four"],
)
def test_tensor_with_several_raw_data_fields_keeps_the_last(tmp_path, sizes):
    model = rich_model()
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    tensor = onnx.TensorProto(name="split", data_type=TensorProto.UINT8, dims=[sizes[-1]])
    rng = np.random.default_rng(1)
    raws = [field(9, 2, rng.integers(0, 256, n, np.uint8).tobytes()) for n in sizes]
    crafted = raws[0] + tensor.SerializeToString() + b"".join(raws[1:])
    graph_bytes = model.graph.SerializeToString() + field(5, 2, crafted)
    src = write_bytes(tmp_path / "split.onnx", head.SerializeToString() + field(7, 2, graph_bytes))
    assert len(onnx.load(src).graph.initializer[-1].raw_data) == sizes[-1]
    splices = assert_round_trip(src, tmp_path)
    assert ("split" in splices) == (sizes[-1] >= 1024)
    # protobuf drops dead raw_data fields when parsing; the reader must drop them before that,
    # so look at the bytes it hands protobuf.
    with open(src, "rb") as f:
        light_bytes = reader._Lightener(reader._Source(f.fileno()), 1024).model()
    dropped = sum(sizes[:-1]) + sum(splice.length for splice in splices.values())
    assert len(light_bytes) <= src.stat().st_size - dropped


def test_repeated_graph_fields_are_merged_like_protobuf(tmp_path):
    first = rich_model(seed=1)
    second = onnx.GraphProto()
    second.initializer.append(
        numpy_helper.from_array(np.ones((32, 32), np.float32), "extra.weight")
    )
    second.initializer.append(numpy_helper.from_array(np.ones((2,), np.float32), "extra.bias"))
    second.doc_string = "the second graph's doc_string wins"
    second.MergeFromString(UNKNOWN)
    head = onnx.ModelProto()
    head.CopyFrom(first)
    head.ClearField("graph")
    data = (
        field(7, 2, first.graph.SerializeToString())
        + head.SerializeToString()
        + field(7, 2, second.SerializeToString())
    )
    src = write_bytes(tmp_path / "two_graphs.onnx", data)
    merged = onnx.load(src)
    assert merged.graph.doc_string == "the second graph's doc_string wins"
    assert merged.graph.initializer[-2].name == "extra.weight"
    splices = assert_round_trip(src, tmp_path)
    assert "extra.weight" in splices and "conv2.weight" in splices


def test_duplicate_initializer_names_only_the_first_is_light(tmp_path):
    model = rich_model()
    twin = onnx.TensorProto()
    twin.CopyFrom(model.graph.initializer[2])
    twin.raw_data = bytes(range(256)) * 20
    model.graph.initializer.append(twin)
    src = save(model, tmp_path / "dupes.onnx")
    splices = assert_round_trip(src, tmp_path)
    assert read_payload(src, splices["conv2.weight"]) == model.graph.initializer[2].raw_data
    light, _ = read_light_model(src)
    assert light.graph.initializer[-1].raw_data == twin.raw_data


def test_overlong_varints_are_accepted_like_protobuf(tmp_path):
    # raw_data's length written in 5 bytes instead of 2, an int64 dim as a 10-byte varint.
    payload = bytes(range(200)) * 10
    length = bytes([len(payload) & 0x7F | 0x80, len(payload) >> 7 | 0x80, 0x80, 0x80, 0x00])
    crafted = field(8, 2, b"odd") + field(2, 0, 8) + field(1, 0, -1) + b"\x4a" + length + payload
    model = rich_model()
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    graph_bytes = model.graph.SerializeToString() + field(5, 2, crafted)
    src = write_bytes(
        tmp_path / "overlong.onnx", head.SerializeToString() + field(7, 2, graph_bytes)
    )
    assert list(onnx.load(src).graph.initializer[-1].dims) == [-1]
    splices = assert_round_trip(src, tmp_path)
    assert splices["odd"] == Splice(src.read_bytes().index(payload), len(payload))


# ----------------------------------------------------------------------------- writer details


def test_writer_falls_back_when_kernel_copies_fail(tmp_path, monkeypatch):
    src = save(rich_model(), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    calls = []

    def refuse(name):
        def fail(*args):
            calls.append(name)
            raise OSError(18, "Invalid cross-device link")

        return fail

    monkeypatch.setattr(os, "copy_file_range", refuse("copy_file_range"), raising=False)
    write_model(light, splices, src, tmp_path / "sendfile.onnx")
    assert calls.count("copy_file_range") == len(splices)
    monkeypatch.setattr(os, "sendfile", refuse("sendfile"), raising=False)
    write_model(light, splices, src, tmp_path / "chunks.onnx")
    assert calls.count("sendfile") == len(splices)
    for name in ("sendfile.onnx", "chunks.onnx"):
        assert loaded(tmp_path / name) == loaded(src)


def test_writer_streams_large_payloads_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(filecopy, "CHUNK", 1000)  # forces several flushes and fallback chunks
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    monkeypatch.delattr(os, "sendfile", raising=False)
    src = save(rich_model(), tmp_path / "rich.onnx")
    assert_round_trip(src, tmp_path)


def test_writer_refuses_a_splice_beside_new_data(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    light.graph.initializer[0].raw_data = b"\0" * 1728
    with pytest.raises(ValueError, match="initializer 'conv1.weight' has raw_data and a splice"):
        write_model(light, splices, src, tmp_path / "out.onnx")


def test_writer_refuses_to_overwrite_its_source(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    before = src.read_bytes()
    light, splices = read_light_model(src)
    with pytest.raises(ValueError, match="over its own source"):
        write_model(light, splices, src, src)
    assert src.read_bytes() == before


def test_writer_reports_a_source_that_shrank(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    data = src.read_bytes()
    src.write_bytes(data[: splices["conv2.weight"].offset + 10])
    with pytest.raises(ModelFileError) as e:
        write_model(light, splices, src, tmp_path / "out.onnx")
    assert str(e.value) == (
        f"model file {str(src)!r} ends at byte {splices['conv2.weight'].offset + 10}, before the "
        "tensor data it held when it was read; it changed while onnxfix was working, "
        "run the command again"
    )
    assert not (tmp_path / "out.onnx").exists()


def test_writer_removes_a_partial_output(tmp_path, monkeypatch):
    src = save(rich_model(), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    out = tmp_path / "out.onnx"
    with pytest.raises(ModelFileError) as e:
        write_model(light, splices, src, out)
    assert str(e.value) == f"cannot write {str(out)!r}: No space left on device"
    assert not out.exists()


def test_writer_refuses_more_than_protobuf_can_read(tmp_path):
    src = save(rich_model(), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    splices["conv1.weight"] = Splice(0, 1 << 31)
    out = tmp_path / "out.onnx"
    with pytest.raises(ModelFileError, match=r"over protobuf's 2 GiB limit; save the model with"):
        write_model(light, splices, src, out)
    assert not out.exists()


def test_model_without_graph_writes_just_the_head(tmp_path):
    model = onnx.ModelProto(ir_version=9, producer_name="nothing")
    out = tmp_path / "out.onnx"
    write_model(model, {}, save(rich_model(), tmp_path / "rich.onnx"), out)
    assert out.read_bytes() == model.SerializeToString()


# ----------------------------------------------------------------------------- bad files


def error_of(path: Path) -> str:
    with pytest.raises(ModelFileError) as e:
        read_light_model(path)
    return str(e.value)


def test_truncated_model_names_the_file_and_the_place(tmp_path):
    model = rich_model()
    data = save(model, tmp_path / "rich.onnx").read_bytes()
    head = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    head.doc_string = model.doc_string
    graph_at = len(head.SerializeToString())  # onnx writes fields 1-6 before the graph (7)
    assert data[graph_at] == 0x3A
    src = write_bytes(tmp_path / "cut.onnx", data[: len(data) // 2])
    assert error_of(src) == (
        f"{str(src)!r} is not a readable ONNX model: the file ends inside a field at byte "
        f"{graph_at}; the file is truncated or corrupt, export or download it again"
    )


def test_text_file_is_not_a_model(tmp_path):
    src = write_bytes(tmp_path / "notes.onnx", b"hello, this is not a model\n")
    assert error_of(src) == (
        f"{str(src)!r} is not a readable ONNX model: a group field (wire type 4, never used by "
        "ONNX) at byte 2; the file is truncated or corrupt, export or download it again"
    )


def test_message_inside_a_graph_that_overruns_it(tmp_path):
    graph = field(5, 2, b"\x42\x05ab") + field(1, 2, b"")  # name field claims 5 bytes, has 2
    data = field(7, 2, graph) + field(2, 2, b"more bytes after the graph")
    src = write_bytes(tmp_path / "overrun.onnx", data)
    assert error_of(src) == (
        f"{str(src)!r} is not a readable ONNX model: a field runs past the end of the message "
        "holding it at byte 4; the file is truncated or corrupt, export or download it again"
    )


def test_nested_garbage_is_left_to_protobuf(tmp_path):
    node = b"\x0a\x05ab"  # a NodeProto whose input string claims 5 bytes and has 2
    src = write_bytes(tmp_path / "bad_node.onnx", field(7, 2, field(1, 2, node)))
    with pytest.raises(DecodeError):
        onnx.load(src)
    message = error_of(src)
    assert message.startswith(f"{str(src)!r} is not a readable ONNX model: protobuf cannot parse")
    assert message.endswith("the file is truncated or corrupt, export or download it again")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x00\x01", "an invalid field number (0) at byte 0"),
        (b"\x0f", "an invalid wire type (7) at byte 0"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "a number longer than 10 bytes at byte 1"),
        (b"\x08\x80", "the file ends inside a field at byte 1"),
        (b"\x3a\x03\x2b\x00\x00", "a group field (wire type 3, never used by ONNX) at byte 2"),
    ],
    ids=["field-0", "wire-type-7", "long-varint", "cut-varint", "group-in-graph"],
)
def test_invalid_wire_data(tmp_path, data, what):
    src = write_bytes(tmp_path / "bad.onnx", data)
    assert error_of(src) == (
        f"{str(src)!r} is not a readable ONNX model: {what}; the file is truncated or corrupt, "
        "export or download it again"
    )


def test_initializer_name_that_is_not_utf8(tmp_path):
    tensor = field(8, 2, b"conv\xff") + field(9, 2, bytes(2000))
    src = write_bytes(tmp_path / "latin.onnx", field(7, 2, field(5, 2, b"") + field(5, 2, tensor)))
    assert error_of(src) == (
        f"{str(src)!r} is not a readable ONNX model: the name of initializer 1 is not UTF-8 "
        "text; the file is truncated or corrupt, export or download it again"
    )


def test_valid_protobuf_without_a_graph_is_not_a_model(tmp_path):
    src = write_bytes(tmp_path / "nograph.onnx", field(1, 0, 9) + field(2, 2, b"producer"))
    assert error_of(src) == f"{str(src)!r} holds no graph; it is not an ONNX model"


def test_empty_missing_and_directory(tmp_path):
    empty = write_bytes(tmp_path / "empty.onnx", b"")
    assert error_of(empty) == f"model file {str(empty)!r} is empty; it is not an ONNX model"
    missing = tmp_path / "missing.onnx"
    assert (
        error_of(missing)
        == f"model file {str(missing)!r} cannot be read: No such file or directory"
    )
    assert error_of(tmp_path) == f"model file {str(tmp_path)!r} cannot be read: Is a directory"
    with pytest.raises(ModelFileError, match="cannot be read: No such file"):
        read_payload(missing, Splice(0, 1))


def test_random_bytes_are_rejected(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(50):
        src = write_bytes(
            tmp_path / f"random{i}.onnx", rng.integers(0, 256, 4096, np.uint8).tobytes()
        )
        assert error_of(src).startswith(f"{str(src)!r} ")


def test_every_cut_and_many_corruptions_agree_with_protobuf(tmp_path):
    """Whatever the damage: a ModelFileError, or exactly what onnx.load reads. Never a crash."""
    data = save(rich_model(), tmp_path / "rich.onnx").read_bytes()
    rng = np.random.default_rng(3)
    damaged = [data[:cut] for cut in range(1, len(data), 7)]
    for _ in range(300):
        flipped = bytearray(data)
        for at in rng.integers(0, len(data), 3):
            flipped[at] = rng.integers(0, 256)
        damaged.append(bytes(flipped))
    outcomes = {"rejected": 0, "same": 0}
    src, out = tmp_path / "damaged.onnx", tmp_path / "out.onnx"
    for data in damaged:
        src.unlink(missing_ok=True)  # ext4 flushes a file truncated by a rewrite: slow
        src.write_bytes(data)
        try:
            expected = onnx.ModelProto.FromString(data).SerializeToString()
        except DecodeError:
            expected = None
        try:
            light, splices = read_light_model(src)
        except ModelFileError:
            outcomes["rejected"] += 1
            continue
        assert expected is not None, f"accepted what protobuf rejects ({len(data)} bytes)"
        out.unlink(missing_ok=True)
        write_model(light, splices, src, out)
        assert loaded(out) == expected
        outcomes["same"] += 1
    assert outcomes["rejected"] > 100 and outcomes["same"] > 10, outcomes


@pytest.mark.parametrize("change", ["none", "same size", "shorter", "small", "payloads move"])
def test_light_view_of_a_plan_is_what_reading_the_written_file_gives(tmp_path, change):
    src = save(with_unknown_fields(rich_model()), tmp_path / "rich.onnx")
    light, splices = read_light_model(src)
    tensor = next(t for t in light.graph.initializer if t.name == "conv2.weight")
    size = {"same size": 16 * 16 * 9, "shorter": 16 * 16, "small": 4, "payloads move": 2304}
    if change != "none":
        tensor.raw_data = np.arange(size[change], dtype=np.float32).tobytes()
        del splices["conv2.weight"]
    if change == "payloads move":
        light.doc_string = "x" * 5000
    before = light.SerializeToString()
    plan = writer.plan_model(light, splices)
    view, view_splices = plan.light_view(light)
    assert light.SerializeToString() == before  # the model planned is left as it was
    writer.write_plan(plan, src, tmp_path / "out.onnx")
    got, got_splices = read_light_model(tmp_path / "out.onnx")
    assert view_splices == got_splices and view.SerializeToString() == got.SerializeToString()
    assert plan.size == (tmp_path / "out.onnx").stat().st_size
    assert ("conv2.weight" in got_splices) == (change != "small")

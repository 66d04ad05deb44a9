"""The GGUF container: files our streaming writer produces read back with the `gguf` package's own
GGUFReader (names, ggml-order shapes, types, offsets, bytes, every metadata value), our reader agrees
with it, and hostile headers (truncated, counts or lengths past the file, offsets out of place) are
refused with CorruptInputError before anything is allocated for them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from convert.errors import CorruptInputError, MappingError
from convert.outputs.gguf.file_format import (
    ALIGNMENT,
    MAX_NAME_BYTES,
    Value,
    ValueType,
    read_gguf,
    string,
    u32,
)
from convert.outputs.gguf.stream import GGUFItem, write_gguf

gguf = pytest.importorskip("gguf")

F32, F16, Q8_0 = 0, 1, 8
SIZES = {F32: (1, 4), F16: (1, 2), Q8_0: (32, 34)}  # what ggml's type traits say of these three


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((7, 5), dtype=np.float32),
        "conv.weight": rng.standard_normal((4, 3, 2, 2), dtype=np.float32),
        "norm.weight": rng.standard_normal(9, dtype=np.float32),
        "head.weight": rng.standard_normal((3, 6)).astype(np.float16),
        "scale": np.array(2.5, dtype=np.float32),
        "cube": rng.standard_normal((2, 3, 5)).astype(np.float16),
    }


METADATA = {
    "general.architecture": string("test"),
    "general.alignment": u32(ALIGNMENT),
    "general.name": string("naïve model"),
    "t.u8": Value(ValueType.UINT8, 200),
    "t.i8": Value(ValueType.INT8, -3),
    "t.u16": Value(ValueType.UINT16, 65000),
    "t.i16": Value(ValueType.INT16, -30000),
    "t.i32": Value(ValueType.INT32, -7),
    "t.f32": Value(ValueType.FLOAT32, 0.5),
    "t.bool": Value(ValueType.BOOL, True),
    "t.u64": Value(ValueType.UINT64, 1 << 40),
    "t.i64": Value(ValueType.INT64, -(1 << 40)),
    "t.f64": Value(ValueType.FLOAT64, 0.125),
    "t.tokens": Value(ValueType.ARRAY, ["a", "bc", ""], ValueType.STRING),
    "t.ids": Value(ValueType.ARRAY, [1, -2, 3], ValueType.INT32),
}


def _write(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, Value] = METADATA) -> object:
    def item(name: str, arr: np.ndarray) -> GGUFItem:
        code = F32 if arr.dtype == np.float32 else F16
        data = arr.tobytes()
        return GGUFItem(name, arr.shape, code, len(data), lambda: [data[:5], data[5:]])  # in pieces, as a quantizer yields

    return write_gguf(path, metadata, [item(k, v) for k, v in arrays.items()], "blake3")


def test_gguf_reader_reads_what_we_write(tmp_path: Path) -> None:
    arrays = _arrays()
    path = tmp_path / "model.gguf"
    written = _write(path, arrays)
    reader = gguf.GGUFReader(path)
    assert reader.fields["GGUF.version"].contents() == 3
    for key, value in METADATA.items():
        field = reader.fields[key]
        assert field.types[0] == value.type
        got = field.contents()
        assert got == pytest.approx(value.value) if not isinstance(got, str) else got == value.value, key
    assert [t.name for t in reader.tensors] == list(arrays)
    for t, (name, arr) in zip(reader.tensors, arrays.items(), strict=True):
        assert list(t.shape) == list(reversed(arr.shape)), name  # ggml order
        assert t.tensor_type == (F32 if arr.dtype == np.float32 else F16)
        assert t.data_offset % ALIGNMENT == 0
        np.testing.assert_array_equal(np.asarray(t.data).reshape(arr.shape), arr)
    ours = read_gguf(path, SIZES)
    assert ours.version == 3 and ours.alignment == ALIGNMENT
    assert {k: v.value for k, v in ours.metadata.items()} == {k: v.value for k, v in METADATA.items()}
    assert [(i.name, i.shape, i.offset, i.nbytes) for i in ours.tensors] == [
        (i.name, i.shape, i.offset, i.nbytes) for i in written.tensors
    ]
    assert [ours.absolute(i)[0] for i in ours.tensors] == [t.data_offset for t in reader.tensors]
    assert ours.file_size == path.stat().st_size == ours.data_start + ours.data_size == written.bytes


def test_tensor_digests_cover_their_bytes(tmp_path: Path) -> None:
    import blake3

    arrays = _arrays()
    path = tmp_path / "model.gguf"
    written = _write(path, arrays)
    raw = path.read_bytes()
    assert written.digest == blake3.blake3(raw).hexdigest()
    for info, digest, arr in zip(written.tensors, written.digests, arrays.values(), strict=True):
        begin = written.data_start + info.offset
        assert raw[begin : begin + info.nbytes] == arr.tobytes()
        assert digest == blake3.blake3(arr.tobytes()).hexdigest()


def test_long_name_refused_naming_it(tmp_path: Path) -> None:
    name = "encoder." + "x" * (MAX_NAME_BYTES - 8)  # 63 bytes: the longest ggml holds
    _write(tmp_path / "ok.gguf", {name: np.zeros(2, np.float32)})
    assert gguf.GGUFReader(tmp_path / "ok.gguf").tensors[0].name == name
    with pytest.raises(MappingError, match=r"'encoder\.x+y'.*64 bytes"):
        _write(tmp_path / "long.gguf", {name + "y": np.zeros(2, np.float32)})
    assert not (tmp_path / "long.gguf").exists()


def test_five_dimensions_refused(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="'t' has 5 dimensions"):
        _write(tmp_path / "x.gguf", {"t": np.zeros((1, 1, 1, 1, 2), np.float32)})
    assert not (tmp_path / "x.gguf").exists()


# Hostile headers, written by hand so each field can lie.
def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _file(
    kv: list[bytes] | None = None,
    infos: list[bytes] | None = None,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    data: bytes = b"\0" * 64,
) -> bytes:
    kv = [_s("general.architecture") + struct.pack("<I", 8) + _s("x")] if kv is None else kv
    infos = [_s("w") + struct.pack("<IQQIQ", 2, 4, 2, F32, 0)] if infos is None else infos
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos) if n_tensors is None else n_tensors, len(kv) if n_kv is None else n_kv)
    body = head + b"".join(kv) + b"".join(infos)
    return body + b"\0" * (-len(body) % ALIGNMENT) + data


def _info(name: bytes | str = "w", dims: tuple[int, ...] = (4, 2), ggml_type: int = F32, offset: int = 0) -> bytes:
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


HOSTILE = {
    "too many tensors": (_file(n_tensors=1 << 60), "more than the file holds"),
    "too many keys": (_file(n_kv=1 << 40), "more than the file holds"),
    "huge string": (_file(kv=[_s("k") + struct.pack("<IQ", 8, 1 << 62)]), "over the limit"),
    "string past the end": (_file(kv=[_s("k") + struct.pack("<IQ", 8, 5000)]), "past the end"),
    "huge array": (_file(kv=[_s("k") + struct.pack("<IIQ", 9, 4, 1 << 28)]), "array claims"),
    "nested array": (_file(kv=[_s("k") + struct.pack("<IIQ", 9, 9, 1)]), "cannot hold"),
    "unknown value type": (_file(kv=[_s("k") + struct.pack("<I", 13)]), "unknown value type"),
    "bad bool": (_file(kv=[_s("k") + struct.pack("<IB", 7, 2)]), "bool"),
    "duplicate key": (_file(kv=[_s("k") + struct.pack("<IB", 0, 1)] * 2), "appears twice"),
    "empty key": (_file(kv=[_s("") + struct.pack("<IB", 0, 1)]), "empty"),
    "alignment not a power of two": (_file(kv=[_s("general.alignment") + struct.pack("<II", 4, 24)]), "power of two"),
    "alignment of the wrong type": (_file(kv=[_s("general.alignment") + struct.pack("<IQ", 10, 32)]), "power of two"),
    "name of 64 bytes": (_file(infos=[_info("n" * 64)]), "over the limit of 63"),
    "duplicate tensor": (_file(infos=[_info(), _info(offset=32)]), "appears twice"),
    "five dimensions": (_file(infos=[_info(dims=(1, 1, 1, 1, 1))]), "5 dimensions"),
    "unknown type": (_file(infos=[_info(ggml_type=99)]), "ggml type 99"),
    "rows not whole blocks": (_file(infos=[_info(dims=(33, 1), ggml_type=Q8_0)]), "not a whole number of 32-element blocks"),
    "dimensions overflow": (_file(infos=[_info(dims=(1 << 40, 1 << 40))]), "too large"),
    "offset outside": (_file(infos=[_info(offset=1 << 50)]), "offset"),
    "offset out of order": (_file(infos=[_info("a"), _info("b", offset=0)]), "expected 32"),
    "data past the end": (_file(infos=[_info(dims=(64, 2))]), "past the file"),
    "version 1": (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1"),
    "not gguf": (b"GGML" + bytes(40), "magic"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_refused(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(CorruptInputError, match=message):
        read_gguf(path, SIZES)


def test_every_truncation_refused(tmp_path: Path) -> None:
    """A valid file cut anywhere before its last tensor's end is refused, never misread."""
    path = tmp_path / "model.gguf"
    _write(path, {"a": np.ones((2, 3), np.float32), "b": np.ones(5, np.float16)})
    raw = path.read_bytes()
    last = read_gguf(path, SIZES)
    end = last.absolute(last.tensors[-1])[1]
    cut = tmp_path / "cut.gguf"
    for n in range(end):
        cut.write_bytes(raw[:n])
        with pytest.raises(CorruptInputError):
            read_gguf(cut, SIZES)

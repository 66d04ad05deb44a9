"""Many small tensors (issue 33's per-tensor cost): small copies gathered into one write, zip members
checked on the open archive, small ranges read rather than mapped, JSON nesting read from brackets.
Each gives the bytes, digests and refusals the per-tensor paths gave."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from convert.documents import MAX_NESTING, _shallow, parse_json
from convert.dtypes import dtype
from convert.errors import CorruptInputError, UsageError
from convert.hashing import hash_range, new_digest, same_ranges
from convert.tensors import FileSpan, TensorRef
from convert.writer import SMALL_TENSOR, WriteItem, write_tensor_file
from convert.zip_members import check_stored_crc, member_offset
from tests.support import assert_same_tensor, convert_cli, run_cli, torch_load


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Tiny layers around a weight larger than SMALL_TENSOR and a transposed view: gathered runs
    broken by tensors written their own way, in both directions."""
    folder = tmp_path_factory.mktemp("small")
    g = torch.Generator().manual_seed(3)
    state: dict[str, torch.Tensor] = {}
    for i in range(150):
        state[f"layers.{i}.weight"] = torch.randn(3, 2, generator=g)
        state[f"layers.{i}.bias"] = torch.randn(3, generator=g)
        if i == 70:
            state["big.weight"] = torch.randn(SMALL_TENSOR // 4 + 5, generator=g)
            state["view.weight"] = torch.randn(5, 7, generator=g).t()
    state["half"] = torch.randn(4, generator=g).to(torch.float16)
    torch.save(state, folder / "model.pt")
    return folder, state


def test_many_small_tensors_convert_and_verify_exactly(mixed: tuple[Path, dict[str, torch.Tensor]]) -> None:
    folder, _ = mixed
    manifest = convert_cli(folder / "model.pt", folder / "out")
    expected = torch_load(folder / "model.pt")
    written = load_file(folder / "out" / "model.safetensors")
    assert set(written) == set(expected)
    for name, tensor in expected.items():
        assert_same_tensor(torch.from_numpy(written[name].copy()), tensor.contiguous(), name)
    assert len(manifest["tensors"]) == len(expected)
    rc, stdout, stderr = run_cli("verify", folder / "out", "--source", folder / "model.pt")
    assert rc == 0, stderr
    assert f"{len(expected)} compared with the source" in stdout


def test_a_gathered_source_that_ends_early_is_refused(tmp_path: Path) -> None:
    """A small copy whose range runs past its source's end: the same refusal as the kernel copy's."""
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(40)))
    f32 = dtype("F32")
    items = [
        WriteItem(name, f32, TensorRef(name, f32, (n,), load=lambda: np.zeros(0), span=FileSpan(str(source), at, 4 * n)))
        for name, at, n in (("a", 0, 2), ("b", 8, 2), ("c", 32, 4))  # c needs bytes 32..48 of 40
    ]
    with pytest.raises(CorruptInputError, match="source.bin: ended early while copying a tensor"):
        write_tensor_file(tmp_path / "out.safetensors", b"", items, [(0, 8), (8, 16), (16, 32)], "blake3")


def test_small_ranges_read_give_the_digests_and_comparisons_mapped_ones_do(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, length in ((0, 1), (5, 100), (4096 - 3, 70_000), (1, 2 << 20)):
            digest = new_digest("sha256")
            hash_range(fd, offset, length, [digest])
            reference = new_digest("sha256")
            reference.update(data[offset : offset + length])
            assert digest.hexdigest() == reference.hexdigest()
    finally:
        os.close(fd)
    copy = tmp_path / "copy"
    copy.write_bytes(b"xyz" + data)
    opened: dict[str, int] = {}
    assert same_ranges([FileSpan(str(path), 10, 500)], [FileSpan(str(copy), 13, 500)], opened)
    assert not same_ranges([FileSpan(str(path), 10, 500)], [FileSpan(str(copy), 14, 500)], opened)
    assert set(opened) == {str(path), str(copy)}, "the caller's descriptors are reused and left open"
    for fd in opened.values():
        os.close(fd)


def test_zip_members_checked_on_the_open_archive(mixed: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    folder, _ = mixed
    damaged = tmp_path / "damaged.pt"
    raw = bytearray((folder / "model.pt").read_bytes())
    with zipfile.ZipFile(folder / "model.pt") as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data/3"))
        fd = zf.fp.fileno()
        start = member_offset(folder / "model.pt", info, fd)
        assert start == member_offset(folder / "model.pt", info)
        check_stored_crc(folder / "model.pt", info, start, fd)
    raw[start] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with zipfile.ZipFile(damaged) as zf:
        with pytest.raises(CorruptInputError, match="fails its CRC-32"):
            check_stored_crc(damaged, info, start, zf.fp.fileno())
    rc, _, stderr = run_cli("pth-to-safetensors", damaged, tmp_path / "out")
    assert rc == 6 and "fails its CRC-32" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("depth", [1, MAX_NESTING, MAX_NESTING + 1])
def test_json_nesting_read_from_brackets_counts_as_the_walk_does(depth: int) -> None:
    """Brackets inside strings (escaped quotes, backslashes) do not count; containers do, as many deep
    as walking the parsed document finds."""
    inner: object = {"s": 'a "[" \\ ] {{ \\" \u005c" caf\u00e9 [', "n": [1, 2.5, None]}
    for _ in range(depth - 3):  # the dict and its list are 2 deep, the wrapping dict 1 more
        inner = [inner]
    doc = {"wrap": inner} if depth > 1 else []
    text = json.dumps(doc, ensure_ascii=False)
    walked_ok = True
    try:
        _shallow(json.loads(text), "doc", UsageError)
    except UsageError:
        walked_ok = False
    assert walked_ok == (depth <= MAX_NESTING)
    for form in (text, text.encode("utf-8"), text.encode("utf-16")):
        if walked_ok:
            assert parse_json(form, "doc", UsageError) == json.loads(text)
        else:
            with pytest.raises(UsageError, match=f"doc: nested more than {MAX_NESTING} deep"):
                parse_json(form, "doc", UsageError)


def test_verify_parses_each_header_once_for_both_its_readers(mixed: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """The file check and the source comparison share one parse: the same header, or the same error."""
    from convert.outputs.safetensors.check import SharedHeaders

    folder, _ = mixed
    if not (folder / "out").exists():
        convert_cli(folder / "model.pt", folder / "out")
    headers = SharedHeaders()
    first = headers(folder / "out" / "model.safetensors")
    assert headers(str(folder / "out" / "model.safetensors")) is first
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00[]      ")
    errors = []
    for _ in range(2):
        with pytest.raises(CorruptInputError) as caught:
            headers(damaged)
        errors.append(caught.value)
    assert errors[0] is errors[1]

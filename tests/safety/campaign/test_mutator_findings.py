"""What the campaign's mutators found: torch zip storages behind an unchanged CRC-32 or
a shifted local header, names too long for the system, and values lost silently (TFLite quantization,
NPY header keys, Keras kernels that do not fit their layer). Each file is written by its framework,
then edited as the campaign's mutator did, and run through the CLI in a child process."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from tests.support import assert_no_output, run_cli
from tests.support.measured_run import refused

CORRUPT = 6


def stored_member(path: Path, suffix: str) -> tuple[zipfile.ZipInfo, int]:
    """The first member whose name ends with `suffix`, and the offset of its local header's fields."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    return info, info.header_offset


def data_start(path: Path, info: zipfile.ZipInfo) -> int:
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def flip_storage_byte(path: Path, suffix: str) -> None:
    """One byte of a stored storage changed, its CRC-32 in both headers left as it was."""
    info, _ = stored_member(path, suffix)
    raw = bytearray(path.read_bytes())
    raw[data_start(path, info) + 1] ^= 0x40
    path.write_bytes(bytes(raw))


def edit_local_lengths(path: Path, suffix: str, name_delta: int, extra_delta: int) -> None:
    """The local header's name or extra length edited: the data start moves, the central directory not."""
    info, offset = stored_member(path, suffix)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, offset + 26)
    struct.pack_into("<HH", raw, offset + 26, name_len + name_delta, extra_len + extra_delta)
    path.write_bytes(bytes(raw))


def torch_files(tmp_path: Path) -> dict[str, Path]:
    """A torch.save zip, a TorchScript archive and a Hugging Face folder of one .bin shard."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    saved = tmp_path / "model.pt"
    torch.save(model.state_dict(), saved)
    script = tmp_path / "script.pt"
    torch.jit.script(model).save(str(script))
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return {"zip": saved, "torchscript": script, "bin": folder / "pytorch_model.bin"}


@pytest.mark.parametrize("damage", ["flipped byte", "extra length -4", "name length +1"])
def test_torch_zip_storage_damage_is_refused(tmp_path: Path, damage: str) -> None:
    """A flipped storage byte, or a local header that shifts the data start, converted with exit 0 and
    the changed tensor; verify --source passed both."""
    files = torch_files(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for kind, path in files.items():
        source = path.parent if kind == "bin" else path
        good = work / f"good-{kind}"
        assert run_cli("auto", source, good)[0] == 0
        if damage == "flipped byte":
            flip_storage_byte(path, "/data/0")
        elif damage == "extra length -4":  # torch pads every local header's extra field by at least 4
            edit_local_lengths(path, "/data/0", 0, -4)
        else:
            edit_local_lengths(path, "/data/0", 1, -1)
        out = work / f"out-{kind}"
        refused(CORRUPT, "auto", source, out, cwd=work, out=out, needles=("data/0",))
        rc, _, err = run_cli("verify", good, "--source", source)
        assert rc == CORRUPT, f"{kind}: verify --source exit {rc}: {err}"
        assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# Names too long for the system (item 5)
# ---------------------------------------------------------------------------------------------

LONG = "x" * 300 + ".safetensors"  # past every file system's 255-byte name limit


def test_too_long_shard_name_in_an_index_is_a_missing_shard(tmp_path: Path) -> None:
    """A 300-character shard name in an index let OSError (File name too long) escape: exit 1."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a": np.zeros(2, np.float32)}, str(folder / "model-00001-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": LONG}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    work = tmp_path / "work"
    work.mkdir()
    for command in ("auto", "inspect"):
        out = work / "out"
        refused(3, command, folder, *([out] if command == "auto" else []), cwd=work, out=out, needles=("missing",))


def test_too_long_checkpoint_path_in_a_tf_state_file(tmp_path: Path) -> None:
    """A long model_checkpoint_path in a TF `checkpoint` file let OSError escape: exit 1. The state
    file names no checkpoint there is, so the folder's one checkpoint is read, as for any other."""
    from tests.support.sources import tf_folder

    folder = tf_folder(tmp_path)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{"c" * 300}"\n')
    rc, _, err = run_cli("inspect", folder)
    assert rc == 0, err
    work = tmp_path / "work"
    work.mkdir()
    refused(3, "inspect", work / ("p" * 300), cwd=work)  # and named on the command line


# ---------------------------------------------------------------------------------------------
# Values lost silently (item 6): NPY header keys, Keras kernels that do not fit their layer
# ---------------------------------------------------------------------------------------------


def test_npy_header_with_an_extra_key_is_refused(tmp_path: Path) -> None:
    """numpy itself refuses it ("Header does not contain the correct keys"); it converted, exit 0."""
    import numpy as np

    path = tmp_path / "w.npy"
    np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    raw = path.read_bytes()
    length = struct.unpack_from("<H", raw, 8)[0]
    header = raw[10 : 10 + length].rstrip(b" \n")
    edited = header[:-1] + b"'scale': 0.5, }"  # the same length, its padding shorter
    raw = raw[:10] + edited.ljust(length - 1) + b"\n" + raw[10 + length :]
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="correct keys"):
        np.load(path)
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, "auto", path, work / "out", cwd=work, out=work / "out", needles=("scale",))

"""Torch checkpoints assembled from real torch.save output: the gadgets in zip and legacy files,
pickles hidden in storages, container damage, bare pickles."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hostile_corpus.common import CANARY_SOURCE, NUMEL, SERIALIZATION_ID, SIZE, ZIP_ALIGNMENT, ZIP_DATE, ZIP_ROOT, Hostile
from hostile_corpus.gadgets import GADGETS
from hostile_corpus.pickles import LEGACY, NO_CANARY, OS_SYSTEM, ZIP, Format, Value, benign, call, dump, glob, tensor


@dataclass(frozen=True)
class TorchBase:
    """Pieces of real torch.save output that every hostile checkpoint is assembled from."""

    zip_entries: tuple[tuple[str, bytes], ...]  # archive-relative names, in torch's order
    legacy_magic: bytes
    legacy_protocol: bytes
    legacy_sys_info: bytes
    legacy_keys: bytes
    legacy_records: bytes  # per storage: int64 element count, then the raw bytes


class TinyNet(nn.Module):
    """Pickled whole, its class is the global ``__main__.TinyNet``, which no allow-list may contain."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)


def saved_from_a_script(module: nn.Module) -> tuple[tuple[str, bytes], ...]:
    """torch.save of a whole module whose class a user's training script defines: the class is pickled
    as ``__main__.<name>`` (put there for the save, as running that script would)."""
    cls, main = type(module), sys.modules["__main__"]
    cls.__module__ = "__main__"
    setattr(main, cls.__name__, cls)
    try:
        return torch_zip_entries(module)
    finally:
        delattr(main, cls.__name__)


def base_state() -> dict[str, torch.Tensor]:
    return {"weight": torch.arange(NUMEL, dtype=torch.float32).reshape(SIZE)}


def torch_zip_entries(root: object) -> tuple[tuple[str, bytes], ...]:
    """torch.save ``root`` and return its records with the random serialization id fixed."""
    buf = io.BytesIO()
    torch.save(root, buf)
    with zipfile.ZipFile(buf) as zf:
        entries = [(info.filename.split("/", 1)[1], zf.read(info)) for info in zf.infolist()]
    return tuple((name, SERIALIZATION_ID if name == ".data/serialization_id" else data) for name, data in entries)


def split_pickles(stream: io.BytesIO, count: int) -> list[bytes]:
    """Cut ``count`` consecutive pickles off ``stream`` without unpickling them."""
    parts = []
    for _ in range(count):
        start = stream.tell()
        for _ in pickletools.genops(stream):
            pass
        parts.append(stream.getvalue()[start : stream.tell()])
    return parts


def torch_base() -> TorchBase:
    legacy = io.BytesIO()
    torch.save(base_state(), legacy, _use_new_zipfile_serialization=False)
    legacy.seek(0)
    # The object pickle and key list name storages by memory address; both are rewritten.
    magic, protocol, sys_info, _objects, _keys = split_pickles(legacy, 5)
    records = legacy.read()
    if struct.unpack_from("<q", records)[0] != NUMEL:
        raise RuntimeError("unexpected legacy storage layout from torch.save")
    return TorchBase(
        zip_entries=torch_zip_entries(base_state()),
        legacy_magic=magic,
        legacy_protocol=protocol,
        legacy_sys_info=sys_info,
        legacy_keys=pickle.dumps(["0"], protocol=2),
        legacy_records=records,
    )


def zip_archive(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """Write records like torch does (stored, 64-byte aligned) but with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(f"{ZIP_ROOT}/{name}", date_time=ZIP_DATE)
            info.create_system = 0  # the default depends on the host OS
            data_start = buf.tell() + 30 + len(info.filename.encode()) + 4
            pad = -data_start % ZIP_ALIGNMENT
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)
    return buf.getvalue()


def zip_checkpoint(
    base: TorchBase,
    data_pkl: bytes,
    replace: Mapping[str, bytes] | None = None,
    append: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    records = {"data.pkl": data_pkl, **(replace or {})}
    return zip_archive([(name, records.get(name, data)) for name, data in base.zip_entries] + list(append))


def legacy_checkpoint(
    base: TorchBase,
    objects: bytes,
    *,
    magic: bytes | None = None,
    sys_info: bytes | None = None,
    keys: bytes | None = None,
    records: bytes | None = None,
) -> bytes:
    """Magic, protocol, sys_info, object pickle, storage key list, storage records, in torch's order."""
    return b"".join(
        (
            magic or base.legacy_magic,
            base.legacy_protocol,
            sys_info or base.legacy_sys_info,
            objects,
            keys or base.legacy_keys,
            records or base.legacy_records,
        )
    )


def legacy_tar(members: Mapping[str, bytes]) -> bytes:
    """The pre-1.0 tar checkpoint layout, which torch.load still tries first on legacy files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gadget_files(base: TorchBase) -> list[Hostile]:
    files = []
    for g in GADGETS:
        zip_data = zip_checkpoint(base, dump(g.root(ZIP), g.protocol))
        legacy_data = legacy_checkpoint(base, dump(g.root(LEGACY), g.protocol))
        files.append(Hostile(f"zip_{g.name}.pt", "zip", g.attack, g.canary, zip_data, g.expect))
        files.append(Hostile(f"legacy_{g.name}.pt", "legacy", g.attack, g.canary, legacy_data, g.expect))
    return files


def pickle_in_storage_files(base: TorchBase) -> list[Hostile]:
    """A storage record whose bytes are a malicious pickle; it is data and must never be unpickled.

    The reference claims one element more than the record holds, so a correct reader has a
    structural reason to refuse rather than convert the pickle bytes into a tensor.
    """
    payload = dump(OS_SYSTEM)
    numel = len(payload) // 4 + 1
    attack = "storage record holds an os.system pickle; numel claims one element past the record end" + NO_CANARY

    def root(fmt: Format) -> Value:
        return {"weight": tensor(fmt.storage(numel=numel), size=(numel,), stride=(1,))}

    return [
        Hostile(
            "zip_pickle_in_storage.pt",
            "zip",
            attack,
            False,
            zip_checkpoint(base, dump(root(ZIP)), replace={"data/0": payload}),
        ),
        Hostile(
            "legacy_pickle_in_storage.pt",
            "legacy",
            attack,
            False,
            legacy_checkpoint(base, dump(root(LEGACY)), records=struct.pack("<q", numel) + payload),
        ),
    ]


def storage_edited(archive: bytes, what: str) -> bytes:
    """`archive` with storage data/0 edited behind the central directory's back: one byte of its data
    flipped ("byte"), or its local header's name length one more ("name length")."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo(f"{ZIP_ROOT}/data/0")
    buf = bytearray(archive)
    name_len, extra_len = struct.unpack_from("<HH", buf, info.header_offset + 26)
    if what == "byte":
        buf[info.header_offset + 30 + name_len + extra_len] ^= 0x40
    else:
        struct.pack_into("<H", buf, info.header_offset + 26, name_len + 1)
    return bytes(buf)


def container_files(base: TorchBase) -> list[Hostile]:
    """Attacks on the container rather than the object pickle."""
    benign_zip = zip_checkpoint(base, dump(benign(ZIP)))
    benign_legacy = legacy_checkpoint(base, dump(benign(LEGACY)))
    hostile = dump(OS_SYSTEM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name we want
        duplicate = zip_checkpoint(base, dump(benign(ZIP)), append=[("data.pkl", hostile)])
    module = TinyNet()
    with torch.no_grad():
        module.proj.weight.copy_(torch.arange(NUMEL, dtype=torch.float32).reshape(SIZE))
        module.proj.bias.zero_()
    return [
        Hostile(
            "zip_duplicate_data_pkl.pt",
            "zip",
            "two data.pkl entries: benign first, os.system second (readers disagree which wins)",
            True,
            duplicate,
        ),
        Hostile(
            "zip_whole_module.pt",
            "zip",
            "whole module pickle: torch.save(nn.Module) of __main__.TinyNet, a class no reader can import" + NO_CANARY,
            False,
            zip_archive(saved_from_a_script(module)),
            "inert",
        ),
        Hostile(
            "zip_truncated.pt",
            "zip",
            "truncated: real checkpoint cut in half" + NO_CANARY,
            False,
            benign_zip[: len(benign_zip) // 2],
        ),
        Hostile(
            "zip_storage_crc_mismatch.pt",
            "zip",
            "a byte of storage data/0 changed, its CRC-32 in both headers left as it was" + NO_CANARY,
            False,
            storage_edited(benign_zip, "byte"),
        ),
        Hostile(
            "zip_local_header_shifted.pt",
            "zip",
            "storage data/0's local header names one byte more than the central directory: the data start moves" + NO_CANARY,
            False,
            storage_edited(benign_zip, "name length"),
        ),
        Hostile(
            "legacy_truncated.pt",
            "legacy",
            "truncated: real checkpoint cut in half" + NO_CANARY,
            False,
            benign_legacy[: len(benign_legacy) // 2],
        ),
        Hostile(
            "legacy_magic_gadget.pt",
            "legacy",
            "the leading magic-number pickle is os.system(...)",
            True,
            legacy_checkpoint(base, dump(benign(LEGACY)), magic=hostile),
        ),
        Hostile(
            "legacy_sys_info_gadget.pt",
            "legacy",
            "the sys_info pickle hides os.system(...) in its type_sizes value",
            True,
            legacy_checkpoint(
                base,
                dump(benign(LEGACY)),
                sys_info=dump({"protocol_version": 1001, "little_endian": True, "type_sizes": OS_SYSTEM}),
            ),
        ),
        Hostile(
            "legacy_keys_gadget.pt",
            "legacy",
            "the storage-key list pickle after the object pickle is os.system(...)",
            True,
            legacy_checkpoint(base, dump(benign(LEGACY)), keys=hostile),
        ),
        Hostile(
            "legacy_view_past_end.pt",
            "legacy",
            "legacy view_metadata ('view', 4, 6) slices past the 6-element root storage" + NO_CANARY,
            False,
            legacy_checkpoint(base, dump({"weight": tensor(LEGACY.storage(view=("view", 4, NUMEL)))})),
        ),
        Hostile(
            "legacy_tar_os_system.pt",
            "legacy",
            "pre-1.0 tar checkpoint whose 'storages' pickle is os.system(...)",
            True,
            legacy_tar({"storages": hostile, "tensors": dump(0), "pickle": dump({})}),
        ),
    ]


def raw_files() -> list[Hostile]:
    return [
        Hostile("raw_os_system.pkl", "raw-pickle", "bare pickle: os.system('touch canary')", True, dump(OS_SYSTEM)),
        Hostile(
            "raw_builtins_eval.pkl",
            "raw-pickle",
            "bare pickle: builtins.eval of source that creates canary",
            True,
            dump(call(glob("builtins", "eval"), CANARY_SOURCE)),
        ),
    ]

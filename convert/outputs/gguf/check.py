"""Prove a GGUF output: each file's header against the manifest (tensor names, ggml types, shapes,
offsets, the keys every file must carry), every file's and tensor's digest, zero padding, and with
the source, every tensor re-encoded from it (transforms replayed, re-quantized) byte for byte.

A changed byte anywhere is named: in the header it changes what the header says (or breaks it), in a
tensor its digest and its bytes against the source, in the padding the padding check, and the file
digest catches it in any case.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from convert.dtypes import CastLossError
from convert.errors import ConvertError
from convert.hashing import file_and_range_digests
from convert.manifest_model import Manifest, TensorEntry
from convert.source import SourceModel
from convert.transforms import apply

from .encode import encoded
from .file_format import ALIGNMENT, GGUFFile, ValueType, read_gguf, split_keys
from .ggml_types import BY_ID, TYPES, GGMLType


def check_files(out_dir: Path, doc: Manifest) -> tuple[int, int, list[str]]:
    """(files checked, tensors checked, problems) for the manifest's GGUF files."""
    files = tensors = 0
    problems: list[str] = []
    count = len(doc["files"])
    for index, entry in enumerate(doc["files"]):
        name = entry["path"]
        path = out_dir / name
        if Path(name).name != name or not path.is_file():
            problems.append(f"{name}: missing")
            continue
        files += 1
        try:
            header: GGUFFile | None = read_gguf(path)
        except ConvertError as exc:
            problems.append(f"{name}: not readable as GGUF ({exc})")
            header = None
        ranges = [header.absolute(t) for t in header.tensors] if header else []
        digest, digests = file_and_range_digests(path, ranges, doc["digest_algorithm"])
        if path.stat().st_size != entry["bytes"] or digest != entry["digest"]:
            problems.append(f"{name}: size or digest differs from the manifest")
        if header is None:
            continue
        expected = [t for t in doc["tensors"] if t["file"] == name]
        problems += _header_problems(name, header, expected, doc, index, count)
        by_name_expected = {t["name"]: t for t in expected}
        for info, got in zip(header.tensors, digests, strict=True):
            t = by_name_expected.get(info.name)
            if t is None:
                continue
            tensors += 1
            if got != t["digest"]:
                problems.append(f"tensor {info.name!r}: bytes do not match the manifest's digest")
        problems += _padding_problems(path, header)
    return files, tensors, problems


def _header_problems(
    name: str, header: GGUFFile, expected: list[TensorEntry], doc: Manifest, index: int, count: int
) -> list[str]:
    problems = []
    if [t.name for t in header.tensors] != [t["name"] for t in expected]:
        problems.append(f"{name}: its tensors differ from the manifest's")
    for info, t in zip(header.tensors, expected, strict=False):
        gtype = TYPES.get(t["dtype"].lower())
        recorded = (gtype.id if gtype else None, tuple(t["shape"]), t["data_offsets"])
        if info.name == t["name"] and (info.ggml_type, info.shape, [info.offset, info.offset + info.nbytes]) != recorded:
            problems.append(f"tensor {info.name!r}: ggml type, shape or offsets differ from the manifest")
    md = header.metadata
    if header.version != 3:
        problems.append(f"{name}: GGUF version {header.version}, not 3")
    arch = md.get("general.architecture")
    if arch is None or arch.type is not ValueType.STRING:
        problems.append(f"{name}: no general.architecture")
    if header.alignment != ALIGNMENT:
        problems.append(f"{name}: general.alignment is {header.alignment}, not {ALIGNMENT} (realizar assumes {ALIGNMENT})")
    quantized = any(BY_ID[t.ggml_type].quantized for t in header.tensors)
    qv = md.get("general.quantization_version")
    if quantized and (qv is None or qv.value != 2):
        problems.append(f"{name}: quantized tensors but general.quantization_version is not 2")
    for key, value in split_keys(index, count, len(doc["tensors"])).items():
        if key not in md or md[key].value != value.value:
            problems.append(f"{name}: {key} is not {value.value}")
    if header.file_size != header.data_start + header.data_size:
        problems.append(f"{name}: {header.file_size} bytes, where its tensors end at {header.data_start + header.data_size}")
    return problems


def _padding_problems(path: Path, header: GGUFFile) -> list[str]:
    """Padding is zeros (gguf.cpp writes zeros; a changed padding byte is named here, not only by the file digest)."""
    problems = []
    gaps = [(header.absolute(t)[1], header.data_start + t.offset + _padded(t.nbytes, header.alignment)) for t in header.tensors]
    with open(path, "rb") as fh:
        for info, (begin, end) in zip(header.tensors, gaps, strict=True):
            if end > begin and os.pread(fh.fileno(), end - begin, begin).strip(b"\0"):
                problems.append(f"{path.name}: the padding after tensor {info.name!r} is not zeros")
    return problems


def _padded(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def compare_with_source(out_dir: Path, doc: Manifest, source: SourceModel) -> tuple[int, list[str]]:
    """Re-encode every tensor from the source (transforms replayed, the recorded type and cast-loss
    choice) and compare with the file's bytes; (tensors compared, problems)."""
    refs = {t.name: t for t in source.tensors}
    compared = 0
    problems: list[str] = []
    headers: dict[str, GGUFFile | None] = {}
    for t in doc["tensors"]:
        names = [s["name"] for s in t["sources"]]
        missing = [n for n in names if n not in refs]
        if missing:
            problems.append(f"tensor {t['name']!r}: source tensor {missing[0]!r} not found in the source")
            continue
        gtype: GGMLType | None = TYPES.get(t["dtype"].lower())
        if t["file"] not in headers:
            try:
                headers[t["file"]] = read_gguf(out_dir / t["file"])
            except (ConvertError, OSError):
                headers[t["file"]] = None  # check_files names it
        header = headers[t["file"]]
        info = next((i for i in header.tensors if i.name == t["name"]), None) if header else None
        if gtype is None or header is None or info is None:
            continue
        compared += 1
        q = t.get("quantization", {})
        try:
            produced = apply(t["transforms"], [refs[n].array() for n in names])
            chunks = encoded(t["name"], produced, gtype, q.get("on_loss", "refuse"), None)
            same = _same_stream(chunks, out_dir / t["file"], *header.absolute(info))
        except CastLossError as exc:
            problems.append(f"tensor {t['name']!r}: {exc}")
            continue
        if not same:
            problems.append(f"tensor {t['name']!r}: differs from its source {names} re-encoded as {t['dtype']}")
    return compared, problems


def _same_stream(chunks: Iterator[memoryview], path: Path, begin: int, end: int) -> bool:
    """Whether the chunks, one after another, are exactly bytes [begin, end) of the file (read a
    chunk at a time, so memory stays flat)."""
    pos = begin
    with open(path, "rb") as fh:
        if end > os.fstat(fh.fileno()).st_size:
            return False
        for chunk in chunks:
            n = len(chunk)
            if pos + n > end or os.pread(fh.fileno(), n, pos) != bytes(chunk):
                return False
            pos += n
    return pos == end

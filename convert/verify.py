"""Prove an output: the files match the manifest, the `safetensors` library's own parser reads them,
every file's and tensor's bytes hash to what the manifest says (in its recorded digest algorithm),
and (with a source) every tensor equals its source after the recorded transforms are undone or
replayed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as manifest_mod
from .dtypes import BY_NUMPY_NAME, CastLossError
from .errors import ConvertError
from .fann import network_problems
from .hashing import file_and_range_digests, hash_range, new_digest, same_ranges
from .safetensors_format import read_header
from .source import SourceModel
from .tensors import TensorRef, c_contiguous, iter_chunks, release_pages
from .transforms import apply

DIGEST_CHUNK = 4 << 20  # a strided source's pieces: small, as they are read beside the file hashing


@dataclass
class VerifyReport:
    output: Path
    files: int = 0
    tensors: int = 0
    compared_with_source: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def most_specific_first(self) -> list[str]:
        """Problems naming a tensor first: a file-level hash mismatch alone says little."""
        return sorted(self.problems, key=lambda p: not p.startswith(("tensor", "alias")))

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "ok": self.ok,
            "files": self.files,
            "tensors": self.tensors,
            "compared_with_source": self.compared_with_source,
            "problems": self.problems,
        }


def verify_output(out: str | Path, source: SourceModel | None = None) -> VerifyReport:
    out_dir = Path(out)
    doc = manifest_mod.load(out_dir)
    manifest_mod.validate(doc)
    report, compared = VerifyReport(out_dir), VerifyReport(out_dir)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the source is read while the files are hashed
        pending = pool.submit(_compare_with_source, out_dir, doc, source, compared) if source is not None else None
        for entry in doc["files"]:
            _check_file(out_dir, entry, doc, report)
        if doc.get("index"):
            _check_index(out_dir, doc, report)
        for entry in doc.get("networks", []):
            report.problems += network_problems(out_dir, entry, doc)
        if pending is not None:
            pending.result()
    report.compared_with_source = compared.compared_with_source
    report.problems += compared.problems
    return report


def _check_file(out_dir: Path, entry: dict[str, Any], doc: dict[str, Any], report: VerifyReport) -> None:
    name = entry["path"]
    path = out_dir / name
    if Path(name).name != name or not path.is_file():
        report.problems.append(f"{name}: missing")
        return
    report.files += 1
    header = None
    if doc["target"]["format"] != "onnx":  # a to-onnx output: its files are the graph, proven by size and hash
        try:
            library_view = _library_header(path)
            header = read_header(path)
        except (ConvertError, Exception) as exc:  # the library raises its own error types
            report.problems.append(f"{name}: not readable as SafeTensors ({exc})")
    ranges = [(header.data_start + e.begin, header.data_start + e.end) for e in header.entries] if header else []
    file_digest, digests = file_and_range_digests(path, ranges, doc["digest_algorithm"])  # one read for both
    if path.stat().st_size != entry["bytes"] or file_digest != entry["digest"]:
        report.problems.append(f"{name}: size or digest differs from the manifest")
    if header is None:
        return
    expected = {t["name"]: t for t in doc["tensors"] if t["file"] == name}
    if set(library_view) != set(expected):
        report.problems.append(f"{name}: tensors {sorted(set(library_view) ^ set(expected))[:5]} differ from the manifest")
    metadata_aliases = {k: v for k, v in header.metadata.items() if k != "format"}
    if header.metadata.get("format") != "pt" or metadata_aliases != doc["aliases"]:
        report.problems.append(f"{name}: metadata does not carry format 'pt' and the manifest's aliases")
    for e, digest in zip(header.entries, digests, strict=True):
        t = expected.get(e.name)
        if t is None:
            continue
        report.tensors += 1
        if library_view[e.name] != (t["dtype"], tuple(t["shape"])) or [e.begin, e.end] != t["data_offsets"]:
            report.problems.append(f"tensor {e.name!r}: dtype, shape or offsets differ from the manifest")
        elif digest != t["digest"]:
            report.problems.append(f"tensor {e.name!r}: bytes do not match the manifest's digest")


def _library_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, dtypes and shapes as the safetensors library (its Rust parser) reads them."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            raw = sl.get_dtype()
            out[k] = (BY_NUMPY_NAME.get(raw.lower(), raw.upper()), tuple(sl.get_shape()))
    return out


def _check_index(out_dir: Path, doc: dict[str, Any], report: VerifyReport) -> None:
    import json

    path = out_dir / doc["index"]
    try:
        index = json.loads(path.read_text())
        weight_map, total = index["weight_map"], index["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        report.problems.append(f"{doc['index']}: missing or malformed")
        return
    if weight_map != {t["name"]: t["file"] for t in doc["tensors"]}:
        report.problems.append(f"{doc['index']}: weight_map differs from the manifest")
    if total != sum(t["data_offsets"][1] - t["data_offsets"][0] for t in doc["tensors"]):
        report.problems.append(f"{doc['index']}: total_size differs from the tensors' bytes")


def _compare_with_source(out_dir: Path, doc: dict[str, Any], source: SourceModel, report: VerifyReport) -> None:
    from convert.safetensors_source import open_safetensors

    refs = {t.name: t for t in source.tensors}
    algorithm = doc["digest_algorithm"]
    try:
        written = open_safetensors(out_dir)
    except ConvertError as exc:
        report.problems.append(f"output not readable for comparison with the source: {exc}")
        return
    with written:
        outputs = {t.name: t for t in written.tensors}
        for t in doc["tensors"]:
            names = [s["name"] for s in t["sources"]]
            missing = [n for n in names if n not in refs]
            if missing:
                report.problems.append(f"tensor {t['name']!r}: source tensor {missing[0]!r} not found in the source")
                continue
            sources = [refs[n] for n in names]
            if not t["transforms"] and len(sources) == 1:
                same = sources[0].dtype.code == t["dtype"] and _same_as_written(sources[0], outputs.get(t["name"]), t, algorithm)
            else:
                try:
                    produced = apply(t["transforms"], [s.array() for s in sources])
                except CastLossError as exc:  # the replayed cast lost values the manifest does not let it lose
                    report.compared_with_source += 1
                    report.problems.append(f"tensor {t['name']!r}: {exc}")
                    continue
                same = t["name"] in outputs and _same_bytes(produced, outputs[t["name"]].array())
            report.compared_with_source += 1
            if not same:
                report.problems.append(f"tensor {t['name']!r}: differs from its source {names}")
    for alias, kept in doc["aliases"].items():
        if alias in refs and kept in refs and not _same_tensor(refs[alias], refs[kept], algorithm):
            report.problems.append(f"alias {alias!r}: its source differs from {kept!r}, so it cannot be re-tied")


def _same_as_written(source: TensorRef, output: TensorRef | None, t: dict[str, Any], algorithm: str) -> bool:
    """A tensor written unchanged: its source range compared with the output's bytes where both lie in
    files (the output's bytes are proven against the manifest's digest by `_check_file`), else the
    source's digest compared with the manifest's."""
    if source.ranges() and output is not None and output.span is not None:
        return same_ranges(source.ranges(), (output.span,))
    return tensor_digest(source, algorithm) == t["digest"]


def _same_tensor(a: TensorRef, b: TensorRef, algorithm: str) -> bool:
    if (a.dtype, a.shape) != (b.dtype, b.shape):
        return False
    if a.ranges() and b.ranges():
        return same_ranges(a.ranges(), b.ranges())  # a tie's two names read one storage: equal without reading it
    return tensor_digest(a, algorithm) == tensor_digest(b, algorithm)


def _same_bytes(produced: np.ndarray, output: np.ndarray) -> bool:
    """The recorded chain replayed on the source gives exactly the bytes written."""
    same = (
        produced.shape == output.shape
        and produced.dtype == output.dtype
        and c_contiguous(produced).tobytes() == np.ascontiguousarray(output).tobytes()
    )
    release_pages(output)
    return same


def tensor_digest(ref: TensorRef, algorithm: str) -> str:
    """The digest of a tensor's C-ordered bytes, read in bounded chunks."""
    digest = new_digest(algorithm)
    if ref.ranges():
        for span in ref.ranges():
            fd = os.open(span.path, os.O_RDONLY)
            try:
                hash_range(fd, span.offset, span.length, [digest])
            finally:
                os.close(fd)
        return digest.hexdigest()
    arr = ref.array()
    for chunk in iter_chunks(arr, DIGEST_CHUNK):
        if chunk.dtype != ref.dtype.numpy:  # big-endian sources are compared as written: little-endian
            chunk = chunk.astype(ref.dtype.numpy)
        digest.update(chunk.reshape(-1).view(np.uint8).data)
        release_pages(arr)
    return digest.hexdigest()

"""Prove an output: the manifest is valid, every output format that wrote files checks them (each
through its face, convert/output_contract.py: the files match the manifest, their bytes hash to its
digests, and with a source every tensor equals its source after the recorded transforms are undone
or replayed), and any listed file no output checked is at least the size and digest recorded."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import manifest as manifest_mod
from .dtypes import CastLossError
from .errors import ConvertError
from .hashing import file_digest, hash_range, new_digest, same_ranges
from .manifest_model import FileEntry, Manifest, TensorEntry
from .output_contract import Checked, Output
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


def verify_output(out: str | Path, source: SourceModel | None = None, outputs: Sequence[Output] = ()) -> VerifyReport:
    """`outputs`: the formats that may have written files here (the faces pass the registry's)."""
    out_dir = Path(out)
    doc = manifest_mod.load(out_dir)
    manifest_mod.validate(doc)
    manifest = cast(Manifest, doc)  # the schema has judged it
    report = VerifyReport(out_dir)
    claimed: set[str] = set()
    for output in outputs:
        checked = output.verify(out_dir, manifest, source)
        report.files += checked.files
        report.tensors += checked.tensors
        report.compared_with_source += checked.compared_with_source
        report.problems += checked.problems
        claimed |= checked.checked_files
    for entry in manifest["files"]:  # a to-onnx output's graph, or files of a format not handed in: size and digest
        if entry["path"] not in claimed:
            _check_digest(out_dir, entry, manifest["digest_algorithm"], report)
    if source is not None and not claimed:
        target = manifest["target"]["format"]
        report.problems.append(f"output not readable for comparison with the source: no output format {target!r} reads it")
    return report


def listed_file(out_dir: Path, name: str, checked: Checked | VerifyReport) -> Path | None:
    """The file a manifest lists as `name`, counted; None (and the problem noted) when it is missing
    or names anything but a file of `out_dir` itself."""
    path = out_dir / name
    if Path(name).name != name or not path.is_file():
        checked.problems.append(f"{name}: missing")
        return None
    checked.files += 1
    return path


def _check_digest(out_dir: Path, entry: FileEntry, algorithm: str, report: VerifyReport) -> None:
    path = listed_file(out_dir, entry["path"], report)
    if path is not None and (path.stat().st_size != entry["bytes"] or file_digest(path, algorithm) != entry["digest"]):
        report.problems.append(f"{entry['path']}: size or digest differs from the manifest")


def compare_with_source(manifest: Manifest, source: SourceModel, open_written: Callable[[], SourceModel]) -> Checked:
    """Every tensor of the manifest against its source: the recorded transforms replayed on the
    source give the written bytes. `open_written` opens the output's tensors (its format's reader)."""
    report = Checked()
    refs = {t.name: t for t in source.tensors}
    algorithm = manifest["digest_algorithm"]
    try:
        written = open_written()
    except ConvertError as exc:
        report.problems.append(f"output not readable for comparison with the source: {exc}")
        return report
    opened: dict[str, int] = {}  # the source and output files, open across every tensor's comparison
    with written, _closing(opened):
        outputs = {t.name: t for t in written.tensors}
        for t in manifest["tensors"]:
            names = [s["name"] for s in t["sources"]]
            missing = [n for n in names if n not in refs]
            if missing:
                report.problems.append(f"tensor {t['name']!r}: source tensor {missing[0]!r} not found in the source")
                continue
            sources = [refs[n] for n in names]
            if not t["transforms"] and len(sources) == 1:
                same = sources[0].dtype.code == t["dtype"] and _same_as_written(
                    sources[0], outputs.get(t["name"]), t, algorithm, opened
                )
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
    for alias, kept in manifest["aliases"].items():
        if alias in refs and kept in refs and not _same_tensor(refs[alias], refs[kept], algorithm):
            report.problems.append(f"alias {alias!r}: its source differs from {kept!r}, so it cannot be re-tied")
    return report


@contextmanager
def _closing(opened: dict[str, int]) -> Iterator[None]:
    try:
        yield
    finally:
        for fd in opened.values():
            os.close(fd)


def _same_as_written(source: TensorRef, output: TensorRef | None, t: TensorEntry, algorithm: str, opened: dict[str, int]) -> bool:
    """A tensor written unchanged: its source range compared with the output's bytes where both lie in
    files (the output's bytes are proven against the manifest's digest by its format's `verify`), else the
    source's digest compared with the manifest's."""
    if source.ranges() and output is not None and output.span is not None:
        return same_ranges(source.ranges(), (output.span,), opened)
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

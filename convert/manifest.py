"""The architecture manifest: what each output tensor is, where it came from and what was done to it.

Its shape is fixed by schemas/manifest.schema.json, which a Rust loader can deserialize against.
Version 2.0 records its `digest_algorithm` and names every hex digest `digest`; a 1.0 manifest (SHA-256,
fields named `sha256`) is read as the 2.0 document it is equivalent to, so older outputs still verify.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .documents import check_schema, parse_json
from .errors import CorruptInputError, SourceNotFoundError, VerificationError
from .manifest_model import Architecture, FileEntry, Generator, JsonObject, Manifest, Sections, Source, Target, TensorEntry, Ties

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION: Literal["2.0"] = "2.0"
LEGACY_VERSION = "1.0"  # SHA-256 only, digests named `sha256`
GENERATOR = "rust-model-convert"


def validate(manifest: dict[str, Any]) -> None:
    """Check a manifest against the schema; raise VerificationError naming the first problem."""
    check_schema(manifest, "manifest.schema.json", "manifest", VerificationError)


def load(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        raise SourceNotFoundError(f"{out_dir}: no {MANIFEST_FILE} (is this a conversion output?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptInputError(f"{path}: not valid JSON ({exc})") from None
    doc = parse_json(text, str(path), CorruptInputError)
    if not isinstance(doc, dict):
        raise CorruptInputError(f"{path}: not a JSON object")
    return upgrade(doc)


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A 1.0 manifest as the equivalent 2.0 document; anything else unchanged (the schema judges it)."""
    if doc.get("manifest_version") != LEGACY_VERSION:
        return doc
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "digest_algorithm": "sha256",
        **{k: v for k, v in doc.items() if k != "manifest_version"},
    }
    source = doc.get("source")
    lists = [doc.get("files"), source.get("files") if isinstance(source, dict) else None, doc.get("tensors")]
    for entry in (e for entries in lists if isinstance(entries, list) for e in entries):
        if isinstance(entry, dict) and "sha256" in entry:
            entry["digest"] = entry.pop("sha256")
    return doc


# One line of JSON in C: `json.dumps` with `indent` runs the pure-Python encoder (2.3 s of a 20,000-tensor
# conversion's profile); without it, the C one.
_ONE_LINE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def dumps(manifest: Mapping[str, object]) -> bytes:
    """The manifest as indented JSON, one record per line: objects open one key per line, and a list
    holding objects or lists puts each item on a line of its own, written by the C encoder (a tensor's
    record, a module's). It parses to the same document as `json.dumps(manifest)`."""
    parts: list[str] = []
    _indented(manifest, 0, parts)
    # A lone surrogate (from an HDF5 attribute, a pickled string) cannot be UTF-8: written as the
    # JSON escape \udXXX, which reads back as the same string.
    return ("".join(parts) + "\n").encode("utf-8", "backslashreplace")


def _indented(value: Any, depth: int, parts: list[str]) -> None:
    inner = "\n" + " " * (depth + 1)
    if isinstance(value, dict) and value:
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            # a key that is not text is written as json writes it ("1", "true"): through a one-key object
            name = _ONE_LINE.encode(key) if type(key) is str else _ONE_LINE.encode({key: 0})[1:-4]
            parts.append(f"{',' if i else ''}{inner}{name}: ")
            _indented(item, depth + 1, parts)
        parts.append("\n" + " " * depth + "}")
    elif isinstance(value, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in value):
        parts.append("[" + ",".join(inner + _ONE_LINE.encode(item) for item in value) + "\n" + " " * depth + "]")
    else:
        parts.append(_ONE_LINE.encode(value))


def generator() -> Generator:
    return {"name": GENERATOR, "version": __version__}


@dataclass
class SourceRecord:
    """The manifest's `source`: what was read (each file {path, bytes, digest}) and what the reader said."""

    format: str
    files: list[FileEntry]
    details: JsonObject
    dropped: dict[str, str] = field(default_factory=dict)  # source arrays not converted, with why
    reader_options: JsonObject | None = None

    def to_json(self) -> Source:
        doc: Source = {"format": self.format, "files": self.files, "details": self.details}
        if self.dropped:
            doc["dropped"] = self.dropped
        if self.reader_options is not None:
            doc["reader_options"] = self.reader_options
        return doc


@dataclass
class TargetRecord:
    """The manifest's `target`: the output format, the layout and options that made it."""

    format: str
    layout: str
    rules: str
    dtype: str | None
    options: JsonObject
    warnings: list[str]
    request: JsonObject | None
    ties: Ties | None = None  # {loader, written, tied}: a tensor output's tied weights
    output_options: JsonObject | None = None  # the tensor output's own options (GGUF: type, type_override)

    def to_json(self) -> Target:
        doc: Target = {
            "format": self.format,
            "layout": self.layout,
            "rules": self.rules,
            "dtype": self.dtype,
            "options": self.options,
            "warnings": self.warnings,
            "request": self.request,
        }
        if self.ties is not None:
            doc["ties"] = self.ties
        if self.output_options:
            doc["output_options"] = self.output_options
        return doc


@dataclass
class Contents:
    """What an output holds, as the manifest lists it: its files, each tensor's entry, the shard index,
    the files carried across from the source folder, tied names stored once, tensors left out."""

    files: list[FileEntry]
    tensors: list[TensorEntry]
    index: str | None = None
    sidecars: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def file_entry(path: Path, shown: str, digest: str) -> FileEntry:
    """A file's entry ({path, bytes, digest}) in `files` or `source.files`; `shown` the path recorded."""
    return {"path": shown, "bytes": os.path.getsize(path), "digest": digest}


def build(
    digest_algorithm: str,
    source: SourceRecord,
    target: TargetRecord,
    contents: Contents,
    architecture: Architecture,
    sections: Sections | None = None,
) -> Manifest:
    """A manifest, for a conversion and for `to-onnx` alike; `sections` adds the top-level parts an
    output writes of its own (a graph, networks)."""
    doc: Manifest = {
        "manifest_version": MANIFEST_VERSION,
        "digest_algorithm": digest_algorithm,
        "generator": generator(),
        "source": source.to_json(),
        "target": target.to_json(),
        "files": contents.files,
        "index": contents.index,
        "sidecars": contents.sidecars,
        "tensors": contents.tensors,
        "aliases": contents.aliases,
        "dropped": contents.dropped,
        "architecture": architecture,
    }
    add_sections(doc, sections or {})
    return doc


def add_sections(doc: Manifest, sections: Sections) -> None:
    """Add the top-level parts an output writes of its own (a graph, then networks) after the rest."""
    if "graph" in sections:
        doc["graph"] = sections["graph"]
    if "networks" in sections:
        doc["networks"] = sections["networks"]

"""The architecture manifest: what each output tensor is, where it came from and what was done to it.

Its shape is fixed by schemas/manifest.schema.json, which a Rust loader can deserialize against.
Version 2.0 records its `digest_algorithm` and names every hex digest `digest`; a 1.0 manifest (SHA-256,
fields named `sha256`) is read as the 2.0 document it is equivalent to, so older outputs still verify.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .documents import check_schema, parse_json
from .errors import CorruptInputError, SourceNotFoundError, VerificationError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = "2.0"
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


def dumps(manifest: dict[str, Any]) -> bytes:
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


def generator() -> dict[str, str]:
    return {"name": GENERATOR, "version": __version__}


@dataclass
class SourceRecord:
    """The manifest's `source`: what was read (each file {path, bytes, digest}) and what the reader said."""

    format: str
    files: list[dict[str, Any]]
    details: dict[str, Any]
    dropped: dict[str, str] = field(default_factory=dict)  # source arrays not converted, with why
    reader_options: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "files": self.files,
            "details": self.details,
            **({"dropped": self.dropped} if self.dropped else {}),
            **({"reader_options": self.reader_options} if self.reader_options is not None else {}),
        }


@dataclass
class TargetRecord:
    """The manifest's `target`: the output format, the layout and options that made it."""

    format: str
    layout: str
    rules: str
    dtype: str | None
    options: dict[str, Any]
    warnings: list[str]
    request: dict[str, Any] | None
    ties: dict[str, Any] | None = None  # {loader, written, tied}: a tensor output's tied weights
    output_options: dict[str, Any] | None = None  # the tensor output's own options (GGUF: type, type_override)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k not in ("ties", "output_options")}
        return {
            **doc,
            **({"ties": self.ties} if self.ties is not None else {}),
            **({"output_options": self.output_options} if self.output_options else {}),
        }


def file_entry(path: Path, shown: str, digest: str) -> dict[str, Any]:
    """A file's entry ({path, bytes, digest}) in `files` or `source.files`; `shown` the path recorded."""
    return {"path": shown, "bytes": os.path.getsize(path), "digest": digest}


def build(
    digest_algorithm: str,
    source: SourceRecord,
    target: TargetRecord,
    files: list[dict[str, Any]],
    tensors: list[dict[str, Any]],
    architecture: dict[str, Any],
    index: str | None = None,
    sidecars: list[str] | None = None,
    aliases: dict[str, str] | None = None,
    dropped: list[str] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A manifest, for a conversion and for `to-onnx` alike; `sections` adds top-level parts of its
    own (a graph, networks)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "digest_algorithm": digest_algorithm,
        "generator": generator(),
        "source": source.to_json(),
        "target": target.to_json(),
        "files": files,
        "index": index,
        "sidecars": sidecars or [],
        "tensors": tensors,
        "aliases": aliases or {},
        "dropped": dropped or [],
        "architecture": architecture,
        **sections,
    }

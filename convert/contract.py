"""The one contract every reader meets, and what it hands back.

Each source format is a subpackage of `exporters/` whose `READER` is a `ReaderFace`: its kind, its
command, the extra it needs, a content sniffer, and `open(path, options)`. The faces (API, CLI, batch,
inspect) reach readers only through `exporters.registry`, which lists the faces in detection order,
so adding a format is one package, one registry line and its tests. This module is core: it names
no reader.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import UsageError
from .options import Option
from .source import Closing, SourceModel
from .zip_members import zip_names


def parse_size(text: str | int | None) -> int | None:
    """'5GB', '500MB', '5G', '500M', '10GiB', '1000000' -> bytes (decimal units as Hugging Face and
    llama.cpp's 5G/500M use them; GiB and Gi binary)."""
    if text is None or isinstance(text, int):
        return text
    units = {
        "": 1,
        "B": 1,
        **{p: 10 ** (3 * i) for i, p in enumerate("KMGT", 1)},
        **{p + "B": 10 ** (3 * i) for i, p in enumerate("KMGT", 1)},
        **{p + "I": 2 ** (10 * i) for i, p in enumerate("KMGT", 1)},
        **{p + "IB": 2 ** (10 * i) for i, p in enumerate("KMGT", 1)},
    }
    s = text.strip().upper()
    num = s.rstrip("KMGTIB")
    try:
        value = int(float(num) * units[s[len(num) :]])
    except (KeyError, ValueError):
        raise UsageError(f"cannot read size {text!r} (examples: 5GB, 500MB, 2GiB)") from None
    if value <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return value


class ReaderOptions:
    """Reader options' values by name, one record for the CLI, the Python API and a job file. Which
    options there are, with their types, defaults and allowed values, each reader declares itself
    (its face's `options`, Option records; exporters.registry.READER_OPTIONS gathers them): the core
    knows none by name. A reader takes `value(option)`, the default when it was not given."""

    def __init__(self, **given: Any) -> None:
        self._given = {k: v for k, v in given.items() if v is not None}

    def given(self) -> dict[str, Any]:
        """The values given (not None), by name."""
        return dict(self._given)

    def value(self, option: Option) -> Any:
        return option.read(self._given.get(option.name))

    def checked(self, declared: tuple[Option, ...]) -> ReaderOptions:
        """Every given value read by its record (`declared`: every option any reader takes): a name
        none declares, or a value outside its choices, is a usage error before any source is opened."""
        records = {o.name: o for o in declared}
        unknown = sorted(set(self._given) - set(records))
        if unknown:
            raise UsageError(f"no reader takes the option {', '.join(map(repr, unknown))} (known: {', '.join(records)})")
        return ReaderOptions(**{k: records[k].read(v) for k, v in self._given.items()})

    @classmethod
    def from_mapping(cls, values: dict[str, Any], declared: tuple[Option, ...]) -> ReaderOptions:
        """From a job file's or a manifest's record: the names `declared` has, read by their records."""
        names = {o.name for o in declared}
        return cls(**{k: v for k, v in values.items() if k in names}).checked(declared)

    def to_json(self, declared: tuple[Option, ...]) -> dict[str, Any]:
        """The value of each `declared` option, JSON-ready (tuples as lists): what a manifest records."""
        values = {o.name: self.value(o) for o in declared}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReaderOptions) and self._given == other._given

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._given.items())))

    def __repr__(self) -> str:
        return f"ReaderOptions({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


class Probe:
    """What sniffers look at, each read at most once: a folder's names, a file's first bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @cached_property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def names(self) -> frozenset[str]:
        """The entries of a folder (empty for a file)."""
        return frozenset(p.name for p in self.path.iterdir()) if self.is_dir else frozenset()

    @cached_property
    def head(self) -> bytes:
        """A file's first 16 bytes (empty for a folder)."""
        if self.is_dir:
            return b""
        with open(self.path, "rb") as fh:
            return fh.read(16)

    @cached_property
    def zip_names(self) -> list[str] | None:
        """A zip file's member names; None when the central directory cannot be read (the archive is
        kept open for the reader: convert.zip_members.open_zip)."""
        return zip_names(self.path)

    @cached_property
    def is_safetensors(self) -> bool:
        """A length, then a JSON object that ends where the length says (its padding is spaces): a
        pickle or msgpack map that happens to hold `{` at byte 8 does not also close a brace there."""
        head = self.head
        if len(head) < 9 or head[8:9] != b"{":
            return False
        end = 8 + struct.unpack("<Q", head[:8])[0]
        if end > self.path.stat().st_size:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(max(9, end - 16))
            return fh.read(end - fh.tell()).rstrip(b" ").endswith(b"}")


@dataclass
class BundleModel:
    """One model of a bundle: the folder it is written to, its source, and its facts for the index."""

    folder: str
    source: SourceModel
    entry: dict[str, Any]  # JSON-ready: what the bundle's index lists for this model (class, alias, ...)


@dataclass
class SourceBundle(Closing):
    """Several models read from one source (a NeuralForecast save folder): each is converted into
    OUT/<folder>/, and OUT/models.json lists them. The core converts a bundle; the reader only reads it."""

    format: str
    path: Path
    models: list[BundleModel]
    details: dict[str, Any] = field(default_factory=dict)  # JSON-ready facts for the index (generation, ...)
    skipped: list[str] = field(default_factory=list)  # entries of the source that are not models' arrays
    closers: list[Callable[[], None]] = field(default_factory=list)
    reader_options: dict[str, Any] | None = None

    def flat(self) -> SourceModel:
        """The whole bundle as one source, tensors named `<folder>/<tensor>`: for inspect."""
        tensors = [t.renamed(f"{m.folder}/{t.name}") for m in self.models for t in m.source.tensors]
        files = list(dict.fromkeys(f for m in self.models for f in m.source.files))
        return SourceModel(
            format=self.format,
            files=files,
            tensors=tensors,
            extras={"skipped": self.skipped},
            architecture={**self.details, "models": {m.folder: m.source.architecture for m in self.models}},
        )


Opened = SourceModel | SourceBundle


@dataclass(frozen=True)
class ReaderFace:
    """What a reader package shows the rest of the toolchain. `open` imports the reader's modules
    (and its framework) only when called, so listing every face costs no import of any framework."""

    kind: str  # detected kind, e.g. "pytorch"
    command: str | None  # its `convert` subcommand, e.g. "pth-to-safetensors" (None: reached by auto/inspect only)
    extra: str | None  # the pyproject extra it needs beyond the core install, e.g. "keras"
    summary: str  # the command's help text
    sniff: Callable[[Probe], bool]  # does this path hold this kind? By content, cheaply
    open: Callable[[Path, ReaderOptions], Opened]
    options: tuple[Option, ...] = ()  # the options it reads, declared by the reader (Option records)
    option_help: dict[str, str] = field(default_factory=dict)  # its own wording for a shared option's --help
    suffixes: tuple[str, ...] = ()  # file names a batch picks up inside a plain folder
    bundle: bool = False  # opens into a SourceBundle
    short: str = ""  # the command's one line in `convert --help`
    example: str = ""  # one typical invocation, shown in the command's --help

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        if len(set(names)) != len(names) or not set(self.option_help) <= set(names):
            raise ValueError(f"reader {self.kind}: options {names} twice, or help for an option it does not take")

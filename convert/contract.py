"""The one contract every reader meets, and what it hands back.

Each source format is a subpackage of `exporters/` whose `READER` is a `ReaderFace`: its kind, its
command, the extra it needs, a content sniffer, and `open(path, options)`. The faces (API, CLI, batch,
inspect) reach readers only through `exporters.registry`, which lists the faces in detection order,
so adding a format is one package, one registry line and its tests. This module is core: it names
no reader.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import UsageError
from .options import Option
from .source import Closing, SourceModel
from .vocabulary import QUANTIZED_MODES


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


@dataclass(frozen=True)
class ReaderOptions:
    """Every reader option in one record, the same for the CLI, the Python API and a batch job file.
    A reader reads the fields its face lists in `options` and ignores the others."""

    key: str | None = None  # pytorch, tensorflow: the dict or checkpoint object holding the model
    strip_prefix: str = "auto"  # pytorch: "auto", "none" or a wrapper prefix to strip from every name
    config: str | None = None  # keras: the model config for a bare .weights.h5
    collections: tuple[str, ...] = ("params",)  # flax: the variable collections holding the weights
    unstack: tuple[str, ...] = ()  # flax: modules stacked by nn.scan or vmap, split into PATH.0, PATH.1, ...
    quantized: str = "dequantize"  # tflite: what to do with int8/uint8 weights
    max_inflated_size: int | None = None  # keras: bytes compressed HDF5 datasets may inflate to (None: the default bound)

    def __post_init__(self) -> None:
        if self.quantized not in QUANTIZED_MODES:
            raise UsageError(f"quantized must be one of {', '.join(QUANTIZED_MODES)}, not {self.quantized!r}")
        object.__setattr__(self, "collections", tuple(self.collections))  # a list from a job file or JSON
        object.__setattr__(self, "unstack", tuple(self.unstack))
        object.__setattr__(self, "max_inflated_size", parse_size(self.max_inflated_size))  # "4GB" from the CLI

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ReaderOptions:
        """From a job file's or a manifest's record: only the fields this record has."""
        return cls(**{k: v for k, v in values.items() if k in cls.names()})

    def to_json(self, only: tuple[str, ...] | None = None) -> dict[str, Any]:
        doc = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items() if only is None or k in only}


READER_OPTIONS: tuple[Option, ...] = (
    Option("key", str, None, "For checkpoints: dotted path of the dict holding the tensors."),
    Option(
        "strip_prefix",
        str,
        "auto",
        "Strip a wrapper's prefix from every name: auto strips DataParallel's `module.`, torch.compile's "
        "`_orig_mod.` (nested too) and a Lightning module's `model.` when every name has it, so names match the inner module.",
    ),
    Option(
        "config", str, None, "The model config for a bare Keras 3 .weights.h5: a .keras file or a JSON config (model.to_json())."
    ),
    Option(
        "collections",
        tuple,
        ("params",),
        "Variable collection holding the weights (repeatable); batch_stats is merged in when present.",
        cli_flag="--collection",
    ),
    Option("unstack", tuple, (), "Split the module at PATH, stacked by nn.scan or vmap, into PATH.0, PATH.1, ... (repeatable)."),
    Option(
        "quantized",
        str,
        "dequantize",
        "int8/uint8 weights: dequantize to f32, or keep them with NAME.scale and NAME.zero_point tensors.",
        tuple(QUANTIZED_MODES),
    ),
    Option(
        "max_inflated_size",
        str,
        None,
        "Keras: how far compressed HDF5 datasets may inflate (5GB, 2GiB); by default at most "
        "64 times the file's size, and 1 GiB for any smaller file.",
    ),
)  # ReaderOptions' fields, declared once: the CLI's flags come from these (tests/faces/test_options.py checks the rest)


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
        """A zip file's member names; None when the central directory cannot be read."""
        try:
            with zipfile.ZipFile(self.path) as zf:
                return zf.namelist()
        # ValueError: a name flagged UTF-8 that is not; NotImplementedError: a zip version past 6.3
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
            return None

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
    options: tuple[str, ...] = ()  # the ReaderOptions fields it reads
    option_help: dict[str, str] = field(default_factory=dict)  # its own wording for an option's --help
    suffixes: tuple[str, ...] = ()  # file names a batch picks up inside a plain folder
    bundle: bool = False  # opens into a SourceBundle
    short: str = ""  # the command's one line in `convert --help`
    example: str = ""  # one typical invocation, shown in the command's --help

    def __post_init__(self) -> None:
        unknown = set(self.options) - set(ReaderOptions.names())
        if unknown:
            raise ValueError(f"reader {self.kind}: unknown options {sorted(unknown)}")

"""The one contract every output format meets, beside the reader contract (convert/contract.py).

An output format (SafeTensors files with their index, ruv-FANN networks, GGUF) is a package under
`convert/outputs/` whose `OUTPUT` is an `Output`: its name, the options it declares, `plan` (from the
mapped tensors' names, shapes and dtypes, before anything is written: what --dry-run prints), `write`
(streaming into the staged folder; what it records in the manifest) and `verify` (its files against
the manifest, and with a source, its tensors against the source). `convert/outputs/registry.py`
lists them, one line each. The pipeline and `verify` reach outputs only through this face: the faces
(API, CLI, batch) hand them the chosen ones, so the core names no output format.

Two roles: the *tensor* output writes the tensor files a conversion is about (one per conversion:
SafeTensors, or GGUF), a *companion* writes files derived from the same mapped tensors beside them
(ruv-FANN's network.json), when the layout or its options ask for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import ConvertError
from .manifest_model import FileEntry, InferredArchitecture, Manifest, Sections
from .options import ConvertOptions, Option

if TYPE_CHECKING:  # annotations only: the CLI reads outputs' options at start-up, before numpy is needed
    from .mapping import Layout, MappedTensor, MappingResult
    from .source import SourceModel
    from .writer import WrittenTensor

Progress = Callable[[int], None]
Role = Literal["tensors", "companion"]


OutputOption = Option  # an option an output declares: its name, type, default, help and allowed values


def option_value(conversion: Conversion, option: Option) -> Any:
    """The value of an option an output declares: a conversion option's field when it is one, else
    what the face put in ConvertOptions.output_options, else its default."""
    if hasattr(conversion.options, option.name):
        return getattr(conversion.options, option.name)
    return conversion.options.output_options.get(option.name, option.default)


@dataclass(frozen=True)
class Conversion:
    """What an output plans from: the source, the layout, every mapped tensor, and the ones to write
    (tied tensors stored once unless the layout duplicates them) with the aliases that name the rest."""

    source: SourceModel
    layout: Layout
    options: ConvertOptions
    mapping: MappingResult
    kept: list[MappedTensor]
    aliases: dict[str, str]  # {dropped alias: kept name}


@dataclass
class Plan:
    """What an output will write, known before any output exists. `rows` is --dry-run's listing
    (name, file, dtype, shape, bytes per tensor), or `listing` builds it (20,000 rows cost a
    conversion that writes them 0.1 s for nothing); `work` is the output's own plan, handed back to its
    `write`. `warnings` are shown and recorded in the manifest, `notices` only shown."""

    files: list[str] = field(default_factory=list)
    tensors: int = 0
    bytes: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    work: Any = None
    listing: Callable[[], list[dict[str, Any]]] | None = None  # `rows`, built only when a dry run asks

    def dry_run_rows(self) -> list[dict[str, Any]]:
        return self.listing() if self.listing is not None else self.rows

    @property
    def empty(self) -> bool:
        """Nothing to write (a companion the layout did not ask for)."""
        return not self.files


@dataclass(frozen=True)
class WriteContext:
    """What every write is told: the digest algorithm for the manifest, and where progress goes."""

    digest: str
    progress: Progress | None = None


@dataclass
class Written:
    """What an output wrote, as the manifest records it: `files` ({path, bytes, digest}: the
    manifest's `files` for the tensor output), each tensor where it landed (with what its casts lost),
    the index file if there is one, and top-level manifest keys of its own (a companion's entries)."""

    files: list[FileEntry] = field(default_factory=list)
    tensors: list[WrittenTensor] = field(default_factory=list)
    index: str | None = None
    records: Sections = field(default_factory=lambda: Sections())


@dataclass
class Checked:
    """What an output's `verify` found: how many files and tensors it checked (`checked_files` names
    them, so the core does not hash them again), tensors compared with the source, problems."""

    files: int = 0
    tensors: int = 0
    compared_with_source: int = 0
    problems: list[str] = field(default_factory=list)
    checked_files: set[str] = field(default_factory=set)


class Output(Protocol):
    """The face of one output format."""

    @property
    def name(self) -> str:
        """What the manifest calls it: `target.format` for a tensor output."""
        ...

    @property
    def role(self) -> Role: ...

    @property
    def empty_error(self) -> type[ConvertError]:
        """What a conversion left with no tensors is, as this output sees it (the exit code it gets)."""
        ...

    @property
    def options(self) -> Sequence[OutputOption]:
        """The options it declares (their values reach it through ConvertOptions)."""
        ...

    def decide(self, architecture: InferredArchitecture, layout: Layout) -> None:
        """Settle what its options say about the architecture, before the layout maps it."""
        ...

    def plan(self, conversion: Conversion) -> Plan:
        """What it will write; every check on names and shapes happens here, before any output exists."""
        ...

    def write(self, plan: Plan, staging: Path, context: WriteContext) -> Written:
        """Write the planned files into the staging folder, streaming; what the manifest records."""
        ...

    def verify(self, out_dir: Path, manifest: Manifest, source: SourceModel | None) -> Checked:
        """Its files in `out_dir` against the manifest (nothing when the manifest holds none of its
        files); with `source`, every tensor it wrote compared with the source."""
        ...


@dataclass(frozen=True)
class Outputs:
    """The outputs of one conversion: the tensor output, and the companions that may write beside it."""

    tensors: Output
    companions: tuple[Output, ...] = ()

    def all(self) -> tuple[Output, ...]:
        return (self.tensors, *self.companions)

"""The conversion options, declared once: each an `Option` (name, type, default, help, allowed values)
from which the CLI's flags take their help, defaults and choices, and against which the batch job
file's keys, its JSON Schema, ConvertOptions and the Python API's keywords are tested
(tests/faces/test_options.py); and ConvertOptions, the record the faces fill and the pipeline and every
output read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError
from .hashing import ALGORITHMS, DEFAULT_ALGORITHM
from .vocabulary import CAST_LOSS, CAST_TARGETS, DTYPE_ALIASES


@dataclass(frozen=True)
class Option:
    """One option: `name` is the Python keyword and the job file's key, `flag` the CLI's (--name
    with dashes unless said), `choices` its allowed values (none: any value of `type`); a tuple-typed
    option is a repeated flag and a list in a job file."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    cli_flag: str | None = None
    brief: str = ""  # its --help where another command's flag stands for it (batch's, for an output's option)
    metavar: str | None = None  # what --help shows for its value (click's own when None)
    file: bool = False  # names a file: the CLI refuses a folder
    parse: Callable[[Any], Any] | None = None  # reads a given value (a size such as "4GB" as bytes)

    @property
    def flag(self) -> str:
        return self.cli_flag or "--" + self.name.replace("_", "-")

    def read(self, value: Any) -> Any:
        """A given value as this option holds it: checked against its choices, a list as a tuple,
        then `parse`d (a usage error, exit 2, when it is none of those)."""
        if value is None:
            return self.default
        if self.choices and value not in self.choices:
            raise UsageError(f"{self.name} must be one of {', '.join(self.choices)}, not {value!r}")
        if self.type is tuple:
            value = tuple(value)
        return self.parse(value) if self.parse else value


CONVERSION_OPTIONS: tuple[Option, ...] = (
    Option("layout", str, "pytorch", "Target naming and tensor layout (see `convert layouts`)."),
    Option("layout_file", str, None, 'Your own layout rules (TOML); `extends = "burn"` builds on a built-in one.', file=True),
    Option(
        "layout_options",
        dict,
        None,
        "Set a layout option, e.g. drop_num_batches_tracked=true; every layout also takes "
        "module_types=PATH=TYPE[,...], ties=alias|duplicate and fold_weight_norm=true|false (weight/spectral "
        "norm pieces folded into the weight; every layout but pytorch does by default).",
        cli_flag="--layout-option",
    ),
    Option(
        "dtype",
        str,
        None,
        f"Cast floating tensors while streaming (integers are kept); also spelled {', '.join(DTYPE_ALIASES)}.",
        tuple(CAST_TARGETS),
    ),
    Option(
        "cast_loss",
        str,
        "refuse",
        "A cast that turns finite values into inf or non-zero ones into zero: refuse it (exit 7), saturate (the "
        "largest finite value instead of inf), or accept it; what was lost is recorded in the manifest.",
        tuple(CAST_LOSS),
    ),
    Option(
        "max_shard_size",
        str,
        None,
        "Split into shards of at most SIZE (5GB, 500MB, 5G, 2GiB): Hugging Face's for SafeTensors, llama.cpp's "
        "split files for GGUF; a tensor larger than SIZE gets a shard of its own, with a warning.",
    ),
    Option(
        "digest",
        str,
        DEFAULT_ALGORITHM,
        "Hash recorded in the manifest for every file and tensor (sha256: comparable with the Hub's LFS ids).",
        tuple(ALGORITHMS),
    ),
    Option("overwrite", bool, False, "Replace an earlier output of this tool."),
    Option("dry_run", bool, False, "Print the plan; write nothing."),
    Option("follow_links", bool, False, "Read source files that are symlinks or hard links (refused by default)."),
)
OPTIONS = {o.name: o for o in CONVERSION_OPTIONS}


@dataclass
class ConvertOptions:
    layout: str = "pytorch"
    layout_file: str | None = None  # a user's rule file (may extend a built-in layout)
    layout_options: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # --dtype: f32, f16, bf16, f64
    cast_loss: str = "refuse"  # --cast-loss: what a narrowing cast may do with values the target cannot hold
    max_shard_size: int | None = None  # bytes
    overwrite: bool = False
    dry_run: bool = False
    digest: str = DEFAULT_ALGORITHM  # --digest: blake3 or sha256, for every file and tensor in the manifest
    follow_links: bool = False  # read source files and sidecars that are symlinks or hard links
    request: dict[str, Any] | None = None  # a batch job's options, recorded so a rerun can skip done work
    output_options: dict[str, Any] = field(default_factory=dict)  # options the chosen outputs declare, by name

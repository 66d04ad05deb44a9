"""The conversion options: one record the faces fill and the pipeline and every output read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .hashing import DEFAULT_ALGORITHM


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
    output_options: dict[str, Any] = field(default_factory=dict)  # the tensor output's own options, by the names it declares

"""What every exporter hands to the core: a source model as lazy tensors in canonical form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tensors import TensorRef


@dataclass
class SourceModel:
    format: str  # e.g. "pytorch-zip", "pytorch-legacy", "hf-pytorch-sharded", "safetensors"
    files: list[Path]  # every file the tensors come from (hashed into the manifest)
    tensors: list[TensorRef]  # canonical names (PyTorch state_dict convention), source order
    sidecars: list[Path] = field(default_factory=list)  # small files carried across (config.json, ...)
    config: dict[str, Any] | None = None  # the model's own config, when the source has one
    extras: dict[str, Any] = field(default_factory=dict)  # JSON-ready facts about the source (key used, skipped entries)
    # What the source itself says about the model (e.g. Keras layer list, Flax module tree), JSON-ready;
    # lands in the manifest's architecture section as "source_model".
    architecture: dict[str, Any] | None = None
    dropped: list[str] = field(default_factory=list)  # source tensors the reader left out, e.g. optimizer state
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()

    def __enter__(self) -> SourceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

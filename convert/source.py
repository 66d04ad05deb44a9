"""What every exporter hands to the core: a source model as lazy tensors in canonical form.

The contract that makes exit 0 a promise: a reader accounts for every array its source holds. Each
one is converted (it is, or feeds, one of `tensors`), dropped with the reason in `dropped` (the
core prints them and records them in the manifest), or refused (the reader raises). A reader that
meets arrays it cannot place must refuse rather than leave them out, and a source that yields no
tensor at all fails in the core (convert.pipeline.convert_source)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from .tensors import MappedFile, TensorRef


class Closing:
    """What a reader opened (mapped files, temporary files) is closed once: by close(), or on leaving
    a with-block."""

    closers: list[Callable[[], None]]

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_mapped(path: str | Path, read: Callable[[Path, MappedFile], SourceModel]) -> SourceModel:
    """`read(path, mapped)` on a file mapped once; the map is closed here if reading fails, and by the
    source's own closers (which `read` gives it) otherwise."""
    from .errors import SourceNotFoundError
    from .tensors import MappedFile

    p = Path(path)
    if not p.is_file():
        raise SourceNotFoundError(f"no such file: {p}")
    with ExitStack() as opened:
        mapped = MappedFile(str(p))
        opened.callback(mapped.close)
        source = read(p, mapped)
        opened.pop_all()
        return source


@dataclass
class SourceModel(Closing):
    format: str  # e.g. "pytorch-zip", "pytorch-legacy", "hf-pytorch-sharded", "safetensors"
    files: list[Path]  # every file the tensors come from (hashed into the manifest)
    tensors: list[TensorRef]  # canonical names (PyTorch state_dict convention), source order
    sidecars: list[Path] = field(default_factory=list)  # small files carried across (config.json, ...)
    config: dict[str, Any] | None = None  # the model's own config, when the source has one
    extras: dict[str, Any] = field(default_factory=dict)  # JSON-ready facts about the source (key used, skipped entries)
    # What the source itself says about the model (e.g. Keras layer list, Flax module tree), JSON-ready;
    # lands in the manifest's architecture section as "source_model".
    architecture: dict[str, Any] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # source array -> why it is not converted
    reader_options: dict[str, Any] | None = None  # the options it was opened with (recorded, so verify reopens it alike)

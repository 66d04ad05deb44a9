"""SafeTensors files and folders as a source: for inspect, verify --source and re-layouts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from convert.dtypes import dtype as lookup_dtype
from convert.errors import SourceNotFoundError
from convert.hf_folder import SAFETENSORS_INDEX, SAFETENSORS_SINGLE, cross_check, index_shards, read_config
from convert.safetensors_format import Header, read_header
from convert.source import SourceModel
from convert.tensors import MappedFile, TensorRef, mapped_tensor

INDEX, SINGLE = SAFETENSORS_INDEX, SAFETENSORS_SINGLE


def open_safetensors(path: str | Path, read: Callable[[Path], Header] = read_header) -> SourceModel:
    """A SafeTensors file or folder (one file, or shards and their index) as a source; `read` parses
    each file's header (verify hands in the headers its file checks parse)."""
    p = Path(path)
    expected: dict[Path, set[str]] = {}  # each shard's tensors, as the index places them
    if p.is_dir():
        if (p / INDEX).is_file():
            expected = index_shards(p / INDEX)
            files = list(expected)
        elif (p / SINGLE).is_file():
            files = [p / SINGLE]
        else:
            raise SourceNotFoundError(f"{p}: no {SINGLE} or {INDEX}")
    elif p.is_file():
        files = [p]
    else:
        raise SourceNotFoundError(f"no such file or folder: {p}")
    tensors: list[TensorRef] = []
    with ExitStack() as opened:  # every file mapped so far is closed if a later one fails
        for f in files:
            header = read(f)
            if f in expected:
                cross_check(f.name, expected[f], {e.name for e in header.entries})
            mapped = MappedFile(str(f))
            opened.callback(mapped.close)
            for e in header.entries:
                tensors.append(
                    mapped_tensor(mapped, e.name, lookup_dtype(e.dtype), e.shape, header.data_start + e.begin, shareable=True)
                )
        config = read_config(p) if p.is_dir() else None
        return SourceModel("safetensors", files, tensors, config=config, closers=[opened.pop_all().close])

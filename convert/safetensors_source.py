"""SafeTensors files and folders as a source: for inspect, verify --source and re-layouts."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from convert.dtypes import dtype as lookup_dtype
from convert.errors import SourceNotFoundError
from convert.hf_folder import SAFETENSORS_INDEX, SAFETENSORS_SINGLE, index_shards, read_config
from convert.safetensors_format import read_header
from convert.source import SourceModel
from convert.tensors import FileSpan, MappedFile, TensorRef, contiguous_strides

INDEX, SINGLE = SAFETENSORS_INDEX, SAFETENSORS_SINGLE


def open_safetensors(path: str | Path) -> SourceModel:
    p = Path(path)
    if p.is_dir():
        if (p / INDEX).is_file():
            files = list(index_shards(p / INDEX))
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
            header = read_header(f)
            mapped = MappedFile(str(f))
            opened.callback(mapped.close)
            for e in header.entries:
                tensors.append(_ref(mapped, f, e.name, e.dtype, e.shape, header.data_start + e.begin, e.end - e.begin))
        config = read_config(p) if p.is_dir() else None
        return SourceModel("safetensors", files, tensors, config=config, closers=[opened.pop_all().close])


def _ref(mapped: MappedFile, path: Path, name: str, code: str, shape: tuple[int, ...], offset: int, length: int) -> TensorRef:
    dt = lookup_dtype(code)
    strides = contiguous_strides(shape)
    return TensorRef(
        name,
        dt,
        shape,
        lambda: mapped.view(offset, dt.numpy, shape, strides),
        span=FileSpan(str(path), offset, length),
        identity=(str(path), offset, shape, code),
    )

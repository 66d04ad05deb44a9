"""SafeTensors files and folders as a source: for inspect, verify --source and re-layouts."""

from __future__ import annotations

from pathlib import Path

from convert.dtypes import dtype as lookup_dtype
from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError
from convert.safetensors_format import read_header
from convert.source import SourceModel
from convert.tensors import FileSpan, MappedFile, TensorRef, contiguous_strides
from exporters.pytorch import read_json  # size-capped, every decoding error a CorruptInputError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def open_safetensors(path: str | Path) -> SourceModel:
    p = Path(path)
    if p.is_dir():
        if (p / INDEX).is_file():
            files = _index_files(p / INDEX)
        elif (p / SINGLE).is_file():
            files = [p / SINGLE]
        else:
            raise SourceNotFoundError(f"{p}: no {SINGLE} or {INDEX}")
    elif p.is_file():
        files = [p]
    else:
        raise SourceNotFoundError(f"no such file or folder: {p}")
    tensors: list[TensorRef] = []
    maps: list[MappedFile] = []
    try:
        for f in files:
            header = read_header(f)
            mapped = MappedFile(str(f))
            maps.append(mapped)
            for e in header.entries:
                tensors.append(_ref(mapped, f, e.name, e.dtype, e.shape, header.data_start + e.begin, e.end - e.begin))
        config_path = p / "config.json" if p.is_dir() else None
        config = read_json(config_path) if config_path and config_path.is_file() else None
    except BaseException:
        for m in maps:
            m.close()
        raise
    return SourceModel("safetensors", files, tensors, config=config, closers=[m.close for m in maps])


def _ref(mapped: MappedFile, path: Path, name: str, code: str, shape: tuple[int, ...], offset: int, length: int) -> TensorRef:
    dt = lookup_dtype(code)
    strides = contiguous_strides(shape)
    return TensorRef(name, dt, shape, lambda: mapped.view(offset, dt.numpy, shape, strides),
                     span=FileSpan(str(path), offset, length), identity=(str(path), offset, shape, code))


def _index_files(index: Path) -> list[Path]:
    doc = read_json(index)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptInputError(f"{index.name}: not a SafeTensors index (no weight_map of tensor names to files)")
    names = sorted(set(weight_map.values()))
    outside = [n for n in names if "/" in n or "\\" in n or n.startswith(".")]
    if outside:
        raise UnsafeInputError(f"{index.name}: shard name {outside[0]!r} points outside the folder")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise SourceNotFoundError(f"{index.name}: shard {missing[0]} is missing")
    return [index.parent / n for n in names]

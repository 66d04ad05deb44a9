"""Which reader opens a path: decided by content, not by the file name alone."""

from __future__ import annotations

import struct
from pathlib import Path

from .errors import SourceNotFoundError, UnsupportedFormatError
from .source import SourceModel


def detect(path: Path) -> str:
    """'pytorch' or 'safetensors' for a file or model folder; UnsupportedFormatError otherwise."""
    if not path.exists():
        raise SourceNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        if (path / "pytorch_model.bin").is_file() or (path / "pytorch_model.bin.index.json").is_file():
            return "pytorch"
        if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
            return "safetensors"
        raise UnsupportedFormatError(f"{path}: no model files this tool recognises in this folder")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pytorch"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size:
        return "safetensors"
    raise UnsupportedFormatError(f"{path.name}: not a format this tool reads (torch.save zip or pickle, SafeTensors)")


def open_source(path: str | Path, key: str | None = None) -> SourceModel:
    p = Path(path)
    kind = detect(p)
    if kind == "pytorch":
        from exporters.pytorch import open_pytorch

        return open_pytorch(p, key)
    from exporters.safetensors import open_safetensors

    return open_safetensors(p)

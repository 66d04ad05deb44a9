"""Which reader opens a path, decided by content (magic bytes, folder contents), not by name alone.

`READERS` maps each detected kind to its exporter, imported only when that kind is opened, so the
core never imports a framework it does not need.
"""

from __future__ import annotations

import importlib
import re
import struct
from pathlib import Path
from typing import Any

from .errors import SourceNotFoundError, UnsupportedFormatError, missing_extra
from .source import SourceModel

# kind -> (exporter module, open function, CLI conversion command)
READERS: dict[str, tuple[str, str, str]] = {
    "pytorch": ("exporters.pytorch", "open_pytorch", "pth-to-safetensors"),
    "safetensors": ("exporters.safetensors", "open_safetensors", "safetensors-to-safetensors"),
    "flax": ("exporters.flax", "open_flax", "flax-to-safetensors"),
    "keras": ("exporters.keras", "open_keras", "keras-to-safetensors"),
    "tensorflow": ("exporters.tensorflow", "open_tensorflow", "tf-to-safetensors"),
    "neuralforecast": ("exporters.neuralforecast", "open_neuralforecast", "nf-to-safetensors"),
    "onnx": ("exporters.onnx", "open_onnx", "onnx-to-safetensors"),
    "numpy": ("exporters.numpy_arrays", "open_numpy", "npz-to-safetensors"),
    "tflite": ("exporters.tflite", "open_tflite", "tflite-to-safetensors"),
}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
TORCH_LEGACY_HEAD = b"\x8a\x0a"  # after PROTO n: LONG1 of 10 bytes, the legacy torch.save magic number


def detect(path: Path) -> str:
    """The kind of source at `path`: a key of READERS (or a kind no reader is installed for)."""
    if not path.exists() and Path(f"{path}.index").is_file():
        return "tensorflow"  # a TF checkpoint named by its prefix
    if not path.exists():
        raise SourceNotFoundError(f"no such file or folder: {path}")
    kind = _detect_folder(path) if path.is_dir() else _detect_file(path)
    if kind is None:
        raise UnsupportedFormatError(f"{path.name}: not a format this tool reads "
                                     f"(supported: {', '.join(sorted(READERS))})")
    return kind


def _detect_folder(path: Path) -> str | None:
    names = {p.name for p in path.iterdir()}
    if "pytorch_model.bin" in names or "pytorch_model.bin.index.json" in names:
        return "pytorch"
    if "model.safetensors" in names or "model.safetensors.index.json" in names:
        return "safetensors"
    if "saved_model.pb" in names or any(n.endswith(".index") for n in names):
        return "tensorflow"
    if "tf_model.h5" in names or "tf_model.h5.index.json" in names:
        return "keras"
    if names & {"flax_model.msgpack", "flax_model.msgpack.index.json", "_METADATA", "_CHECKPOINT_METADATA"}:
        return "flax"
    if any(n.isdigit() and (path / n / "_CHECKPOINT_METADATA").is_file() for n in names):
        return "flax"  # an orbax CheckpointManager folder: one subfolder per step
    if is_neuralforecast_folder(path):
        return "neuralforecast"
    return None


def is_neuralforecast_folder(path: Path) -> bool:
    """A folder `NeuralForecast.save` wrote, of any release: it keeps the forecaster's configuration."""
    return any((path / name).is_file() for name in ("alias_to_model.pkl", "configuration.json", "configuration.pkl"))


def _detect_file(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    size = path.stat().st_size
    if _is_safetensors(path, head, size):  # first: a 640-byte header's length starts 80 02, a pickle's opening
        return "safetensors"
    if head.startswith(ZIP_MAGIC):
        return _detect_zip(path)
    if head.startswith(HDF5_MAGIC):
        return "keras"
    if path.suffix == ".index" or re.search(r"\.data-[0-9]{5}-of-[0-9]{5}$", path.name):
        return "tensorflow"  # a TF checkpoint's index (an SSTable: no magic at its start) or data shard
    if head.startswith(NPY_MAGIC):
        return "numpy"
    if head[4:8] == b"TFL3":
        return "tflite"  # a flatbuffer with the TFLite file identifier
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        # the legacy torch.save format starts with its magic number; any other pickle is read as arrays
        return "pytorch" if head[2:4] == TORCH_LEGACY_HEAD else "numpy"
    if head[:1] and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "flax"  # a msgpack map: flax.serialization.to_bytes
    if path.suffix == ".onnx" and head[:1] == b"\x08":
        return "onnx"  # protobuf ModelProto, field 1 (ir_version) first
    if path.suffix == ".safetensors":
        return "safetensors"  # a damaged header: the reader says what is wrong with it
    return None


def _is_safetensors(path: Path, head: bytes, size: int) -> bool:
    """A length, then a JSON object that ends where the length says (its padding is spaces): a pickle
    that happens to hold `{` at byte 8 does not also close a brace there."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    end = 8 + struct.unpack("<Q", head[:8])[0]
    if end > size:
        return False
    with open(path, "rb") as fh:
        fh.seek(max(9, end - 16))
        return fh.read(end - fh.tell()).rstrip(b" ").endswith(b"}")


def _detect_zip(path: Path) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):  # ValueError: a name flagged UTF-8 that is not
        return "pytorch"  # let the torch reader give its precise error
    if any(n.endswith("/data.pkl") for n in names):
        return "pytorch"
    if names and all(n.endswith(".npy") for n in names):
        return "numpy"  # np.savez
    if "model.weights.h5" in names or "config.json" in names:
        return "keras"
    return None


def reader(kind: str) -> Any:
    entry = READERS.get(kind)
    if entry is None:
        raise UnsupportedFormatError(f"this looks like a {kind} source, which this installation cannot read yet")
    module, function, _ = entry
    try:
        return getattr(importlib.import_module(module), function)
    except ImportError as exc:
        raise (missing_extra(exc.name or "", f"reading a {kind} source")
               or UnsupportedFormatError(f"reading a {kind} source needs an optional extra: {exc}")) from None


def open_source(path: str | Path, key: str | None = None, strip_prefix: str = "auto") -> SourceModel:
    """Open any supported source; `key` selects a nested dict in checkpoints that have them,
    `strip_prefix` a wrapper prefix to strip from a torch checkpoint's names."""
    p = Path(path)
    kind = detect(p)
    if kind == "pytorch":
        return reader(kind)(p, key, strip_prefix)
    if kind == "tensorflow":
        return reader(kind)(p, key)
    return reader(kind)(p)

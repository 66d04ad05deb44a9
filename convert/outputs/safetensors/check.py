"""`verify` for SafeTensors files: each listed file read by the `safetensors` library's own parser and
by ours, its header against the manifest's tensors and aliases, its bytes against the digests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from convert.dtypes import BY_NUMPY_NAME
from convert.errors import ConvertError
from convert.hashing import file_and_range_digests
from convert.manifest_model import FileEntry, Manifest
from convert.output_contract import Checked
from convert.safetensors_format import Header, read_header
from convert.verify import listed_file


class SharedHeaders:
    """Each file's header parsed once for one verify, by whichever of the file check and the source
    comparison's reader (two threads) asks first; the other gets the same header, or the same error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[Path, Header | ConvertError] = {}

    def __call__(self, path: str | Path) -> Header:
        key = Path(path)
        with self._lock:  # the second caller waits for the first's parse rather than parsing again
            if key not in self._parsed:
                try:
                    self._parsed[key] = read_header(key)
                except ConvertError as exc:
                    self._parsed[key] = exc
            found = self._parsed[key]
        if isinstance(found, ConvertError):
            raise found
        return found


def check_file(
    out_dir: Path, entry: FileEntry, manifest: Manifest, checked: Checked, read: Callable[[Path], Header] = read_header
) -> None:
    """One file of the manifest's `files`: readable, its size and digest, and every tensor in it;
    `read` parses its header (a SharedHeaders, when the source comparison reads it too)."""
    name = entry["path"]
    path = listed_file(out_dir, name, checked)
    if path is None:
        return
    header = None
    try:
        library_view = _library_header(path)
        header = read(path)
    except (ConvertError, Exception) as exc:  # the library raises its own error types
        checked.problems.append(f"{name}: not readable as SafeTensors ({exc})")
    ranges = [(header.data_start + e.begin, header.data_start + e.end) for e in header.entries] if header else []
    file_digest, digests = file_and_range_digests(path, ranges, manifest["digest_algorithm"])  # one read for both
    if path.stat().st_size != entry["bytes"] or file_digest != entry["digest"]:
        checked.problems.append(f"{name}: size or digest differs from the manifest")
    if header is None:
        return
    expected = {t["name"]: t for t in manifest["tensors"] if t["file"] == name}
    if set(library_view) != set(expected):
        checked.problems.append(f"{name}: tensors {sorted(set(library_view) ^ set(expected))[:5]} differ from the manifest")
    metadata_aliases = {k: v for k, v in header.metadata.items() if k != "format"}
    if header.metadata.get("format") != "pt" or metadata_aliases != manifest["aliases"]:
        checked.problems.append(f"{name}: metadata does not carry format 'pt' and the manifest's aliases")
    for e, digest in zip(header.entries, digests, strict=True):
        t = expected.get(e.name)
        if t is None:
            continue
        checked.tensors += 1
        if library_view[e.name] != (t["dtype"], tuple(t["shape"])) or [e.begin, e.end] != t["data_offsets"]:
            checked.problems.append(f"tensor {e.name!r}: dtype, shape or offsets differ from the manifest")
        elif digest != t["digest"]:
            checked.problems.append(f"tensor {e.name!r}: bytes do not match the manifest's digest")


def _library_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, dtypes and shapes as the safetensors library (its Rust parser) reads them."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            raw = sl.get_dtype()
            out[k] = (BY_NUMPY_NAME.get(raw.lower(), raw.upper()), tuple(sl.get_shape()))
    return out

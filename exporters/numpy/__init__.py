"""NumPy arrays: .npy, .npz, and plain pickles of dicts/lists of ndarrays, read without np.load."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.source import SourceModel

NPY_MAGIC = b"\x93NUMPY"


def sniff(probe: Probe) -> bool:
    head = probe.head
    if head.startswith(NPY_MAGIC):
        return True
    if head.startswith(b"PK\x03\x04"):
        names = probe.zip_names or []
        return bool(names) and all(n.endswith(".npy") for n in names)  # np.savez
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # any other pickle


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_numpy

    return open_numpy(path)


READER = ReaderFace(
    kind="numpy",
    command="npz-to-safetensors",
    extra=None,
    sniff=sniff,
    open=open_source,
    summary="Convert NumPy arrays (.npz, .npy, a .npy holding a saved dict, or a plain pickle of dicts/lists of "
    "ndarrays) into the folder OUT, without np.load or pickle: pickled data is read by the restricted "
    "unpickler (array reconstruction and dtypes only). Flax-like trees (kernel, scale, embedding) reach "
    "PyTorch names and layouts as flax-to-safetensors gives them; other trees keep their names.",
    suffixes=(".npz", ".npy"),
    short="Convert NumPy .npz/.npy files or pickles of arrays.",
    example="convert npz-to-safetensors params.npz out/",
)

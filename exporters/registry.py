"""Every reader, in detection order: the one list the API, CLI, batch and inspect consult.

Detection is by content (magic bytes, folder contents), not by name alone; the first face whose
sniffer claims a path opens it. Order matters where contents overlap: a folder holding both
pytorch_model.bin and model.safetensors is read as PyTorch, and a SafeTensors file whose header
length looks like a pickle or msgpack opening is claimed before the NumPy and Flax sniffers see it.
"""

from __future__ import annotations

from pathlib import Path

from convert.contract import Opened, Probe, ReaderFace, ReaderOptions
from convert.errors import SourceNotFoundError, UnsupportedFormatError, UsageError, missing_extra
from convert.hub import resolve as resolve_repo
from convert.links import refuse_input_links
from convert.options import Option

from . import flax, keras, neuralforecast, numpy, onnx, pytorch, safetensors, tensorflow, tflite
from .shared.options import KEY, QUANTIZED

READERS: tuple[ReaderFace, ...] = (
    pytorch.READER,
    safetensors.READER,
    tensorflow.READER,
    keras.READER,
    flax.READER,
    neuralforecast.READER,
    numpy.READER,
    tflite.READER,
    onnx.READER,
)

# Every option some reader declares, each once, in the order `auto` and `batch` list them (the faces'
# records themselves: tests/faces/test_options.py holds this to be exactly the union of the faces' options).
READER_OPTIONS: tuple[Option, ...] = (
    KEY,
    pytorch.STRIP_PREFIX,
    keras.CONFIG,
    flax.COLLECTIONS,
    flax.UNSTACK,
    QUANTIZED,
    keras.MAX_INFLATED_SIZE,
)


def detect(path: Path) -> ReaderFace:
    """The reader for `path`, by content."""
    if not path.exists() and Path(f"{path}.index").is_file():
        return tensorflow.READER  # a TF checkpoint named by its prefix
    if not path.exists():
        raise SourceNotFoundError(f"no such file or folder: {path}")
    probe = Probe(path)
    for face in READERS:
        if face.sniff(probe):
            return face
    raise UnsupportedFormatError(
        f"{path.name}: not a format this tool reads (supported: {', '.join(sorted(f.kind for f in READERS))})"
    )


def _next_step(path: Path, refused_by: ReaderFace) -> str:
    """Which command reads a source that the reader a user named refused ("" when none does)."""
    try:
        face = detect(path)
    except (UnsupportedFormatError, SourceNotFoundError):
        face = None
    if face is not None and face is not refused_by:
        return f"it is a {face.kind} source: `convert {face.command or 'auto'}` reads it"
    names = Probe(path).zip_names if path.is_file() else None
    if names and any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return "it is a torch.export program (.pt2): `convert to-onnx` exports it"
    return ""


def face_named(name: str) -> ReaderFace:
    """A reader by its kind or its command name (`pytorch` or `pth-to-safetensors`)."""
    for face in READERS:
        if name in (face.kind, face.command):
            return face
    known = ", ".join(f.command for f in READERS if f.command)
    raise UsageError(f"unknown conversion {name!r}; known: auto, {known}")


def suffixes() -> tuple[str, ...]:
    """File name endings a batch picks up inside a plain folder."""
    return tuple(s for f in READERS for s in f.suffixes)


def open_source(path: str | Path, options: ReaderOptions | None = None, kind: str = "auto", follow_links: bool = False) -> Opened:
    """Open any supported source with the reader `kind` names (or the one its content calls for).
    A Hugging Face repository id is read from its cache snapshot folder (convert.hub). Links among the
    files it may open are refused before any is read (unless `follow_links`). A missing optional extra
    is exit 4 with the command that installs it."""
    options = (options or ReaderOptions()).checked(READER_OPTIONS)
    p = resolve_repo(path)
    refuse_input_links(p, follow_links)
    face = detect(p) if kind == "auto" else face_named(kind)
    try:
        opened = face.open(p, options)
    except (UnsupportedFormatError, SourceNotFoundError) as exc:
        hint = _next_step(p, face) if kind != "auto" else ""
        if not hint:
            raise
        raise type(exc)(f"{exc}; {hint}") from None
    except ImportError as exc:  # ModuleNotFoundError, or an import that an environment blocks
        error = missing_extra(exc.name or "", f"reading a {face.kind} source")
        if error is None:
            raise
        raise error from None
    opened.reader_options = options.to_json(face.options)
    return opened

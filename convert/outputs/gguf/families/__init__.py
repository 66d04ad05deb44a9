"""Language-model families as llama.cpp runs them: chosen by `config.json`'s `model_type`, each
renames the mapped tensors to llama.cpp's names (with its converter's surgery, recorded as
transforms so `verify --source` replays them) and gives the `{arch}.*` and `tokenizer.ggml.*` keys.

A model of no known family (or converted with a layout other than the default) keeps its canonical
names and the generic metadata, and says so."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.errors import MappingError, UnsupportedFormatError
from convert.hf_folder import SIDECAR_MAX_BYTES
from convert.mapping import PATTERN_BUDGET_S, MappedTensor, compile_pattern, fill
from convert.output_contract import Conversion
from convert.source import SourceModel
from convert.transforms import derived

from ..build import generic_metadata
from ..file_format import Value, string
from ..tokenizer import TOKENIZER_FILES, no_vocab, tokenizer_metadata
from .gemma2 import GEMMA2
from .gpt2 import GPT2
from .llama import LLAMA, MISTRAL, QWEN2, QWEN3
from .phi3 import PHI3
from .table import Config, Family

FAMILIES: tuple[Family, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, PHI3, GEMMA2, GPT2)
DEFAULT_LAYOUT = "pytorch"  # the names a family's table is written against


@dataclass
class Adapted:
    """The metadata keys of the file, and what to tell the user."""

    metadata: dict[str, Value]
    notices: list[str] = field(default_factory=list)
    arch: str | None = None  # the family's llama.cpp architecture; None: canonical names


def family_for(config: dict[str, Any] | None) -> Family | None:
    model_type = (config or {}).get("model_type")
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def adapt(conversion: Conversion, without_vocab: bool = False) -> Adapted:
    """For a model of a known family: rename `conversion.kept` (and the aliases) in place to
    llama.cpp's names, appending the family's surgery to each tensor's transforms, and return the
    family's keys with the tokenizer's. Otherwise the generic keys and a notice."""
    source = conversion.source
    family = family_for(source.config)
    if family is None or conversion.layout.name != DEFAULT_LAYOUT:
        model_type = (source.config or {}).get("model_type")
        known = ", ".join(sorted({m for f in FAMILIES for m in f.model_types}))
        if family is not None:
            why = f"the layout is {conversion.layout.name!r}, not {DEFAULT_LAYOUT!r}"
        elif model_type:
            why = f"config.json's model_type {model_type!r} is none of {known}"
        else:
            why = "no config.json model_type names a language-model family"
        return Adapted(generic_metadata(source.config, source.format), [f"GGUF names are the canonical ones: {why}"])
    cfg = Config(family.arch, source.config or {})
    metadata = {"general.architecture": string(family.arch), **family.metadata(cfg)}
    renamed = rename(conversion.kept, family, cfg)
    for alias, kept in list(conversion.aliases.items()):
        conversion.aliases[alias] = renamed.get(kept, kept)
    rows = int(cfg.need("vocab_size"))
    metadata.update(no_vocab() if without_vocab else tokenizer_metadata(tokenizer_files(source), cfg.raw, rows))
    return Adapted(metadata, [f"{family.arch}: {len(renamed)} tensors named as llama.cpp names them"], family.arch)


def tokenizer_files(source: SourceModel) -> list[Path]:
    """The tokenizer's files: the sidecars the reader carries, else those beside the weights (a
    SafeTensors folder's reader carries none). Symlinks are not followed out of the folder."""
    found = {p.name: p for p in source.sidecars if p.name in TOKENIZER_FILES}
    folder = source.files[0].parent if source.files else None
    for name in TOKENIZER_FILES:
        candidate = folder / name if folder is not None else None
        if name not in found and candidate is not None and candidate.is_file() and not candidate.is_symlink():
            if candidate.stat().st_size > SIDECAR_MAX_BYTES:
                raise UnsupportedFormatError(f"{name}: larger than {SIDECAR_MAX_BYTES >> 20} MiB")
            found[name] = candidate
    return list(found.values())


def rename(kept: list[MappedTensor], family: Family, cfg: Config) -> dict[str, str]:
    """Each tensor to its llama.cpp name, its surgery appended; a name the table does not know is
    refused (with every such name counted), since llama.cpp would not load what it cannot name."""
    patterns = [(compile_pattern(e.source), e) for e in family.entries]
    renamed: dict[str, str] = {}
    unknown: list[str] = []
    for m in kept:
        found = next(((hit, e) for p, e in patterns if (hit := p.match(m.name, timeout=PATTERN_BUDGET_S))), None)
        if found is None:
            unknown.append(m.name)
            continue
        hit, entry = found
        name = fill(entry.target, {k: v or "" for k, v in hit.groupdict().items()})
        extra = cfg.surgery(entry.surgery, m.ref.shape, m.ref.dtype.code)
        renamed[m.name] = name
        m.ref = derived(name, [m.ref], extra) if extra else m.ref.renamed(name)
        m.transforms = [*m.transforms, *extra]
        m.name = name
    if unknown:
        raise MappingError(f"{len(unknown)} tensor(s) llama.cpp's {family.arch} has no name for, e.g. {unknown[0]!r}")
    return renamed

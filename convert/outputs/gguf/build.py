"""A GGUF output from mapped tensors: plan every tensor's type and size (refusing what GGUF cannot
hold before anything is written), cut the plan into llama.cpp's split files, write them streaming,
and describe each tensor for the manifest.

The metadata is a family's function: today one generic family, which names the architecture after
the model's `config.json` `model_type` (else the source format) and writes the keys every GGUF file
carries; an LLM family (llama.cpp's tensor names, hyper-parameters, tokenizer) is a table of names
plus such a function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.errors import MappingError
from convert.manifest_model import QuantizationReason, TensorRecord
from convert.mapping import MappedTensor
from convert.writer import WrittenTensor

from .choose import Choice, choose, parse_overrides, parse_type, refuse_unquantizable, unused_overrides
from .encode import Measured, encoded
from .file_format import ALIGNMENT, MAX_DIMS, MAX_NAME_BYTES, Value, shard_names, split_keys, string, u32
from .stream import GGUFItem, Progress, WrittenGGUF, write_gguf

QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION: what llama.cpp expects of quantized files
# general.file_type for each --type: llama.cpp's `enum llama_ftype` (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, ...);
# a K-quant's plain type is its _S preset, which keeps nearly every tensor in that type.
FILE_TYPES = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k": 11,
    "q4_k": 14,
    "q5_k": 16,
    "q6_k": 18,
    "bf16": 32,
}


@dataclass
class PlannedTensor:
    mapped: MappedTensor
    choice: Choice
    measured: Measured = field(default_factory=Measured)

    @property
    def name(self) -> str:
        return self.mapped.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mapped.ref.shape

    @property
    def nbytes(self) -> int:
        t = self.choice.type
        return math.prod(self.shape) // t.block_size * t.type_size


@dataclass
class GGUFPlan:
    type_name: str  # --type
    on_loss: str  # --cast-loss: what a narrowing float cast (F16, BF16) may do with values it cannot hold
    shards: list[list[PlannedTensor]]
    files: list[str]
    warnings: list[str]
    notices: list[str]

    @property
    def tensors(self) -> list[PlannedTensor]:
        return [t for shard in self.shards for t in shard]


def plan(
    kept: Sequence[MappedTensor], type_name: str, overrides: Sequence[str], max_shard_size: int | None, on_loss: str = "refuse"
) -> GGUFPlan:
    """Every tensor's ggml type and size, or a refusal naming what GGUF cannot hold: names over 63
    bytes (all of them counted, the first named), more than 4 dimensions, integer tensors, an unknown
    type, an override that matches nothing."""
    default = parse_type(type_name)
    parsed = parse_overrides(overrides)
    long_names = [m.name for m in kept if len(m.name.encode("utf-8")) > MAX_NAME_BYTES]
    if long_names:
        raise MappingError(
            f"{len(long_names)} tensor name(s) over GGUF's {MAX_NAME_BYTES}-byte limit, e.g. {long_names[0]!r} "
            f"({len(long_names[0].encode('utf-8'))} bytes); shorten them with a layout rule file"
        )
    used: set[str] = set()
    planned = []
    for m in kept:
        refuse_unquantizable(m.name, m.ref.dtype)
        _without_casts(m)
        if len(m.ref.shape) > MAX_DIMS:
            raise MappingError(f"tensor {m.name!r} has {len(m.ref.shape)} dimensions; GGUF holds at most {MAX_DIMS}")
        planned.append(PlannedTensor(m, choose(m.name, m.ref.shape, default, parsed, used)))
    unused_overrides(parsed, used)
    warnings = [f"tensor {p.name!r}: {p.choice.reason}" for p in planned if p.choice.fallback]
    shards = _shards(planned, max_shard_size)
    warnings += [
        f"{p.name} ({p.nbytes:,} bytes) is larger than --max-shard-size ({max_shard_size:,} bytes): it has a file of its own"
        for p in planned
        if max_shard_size and p.nbytes > max_shard_size
    ]
    kept_f32 = sum(1 for p in planned if p.choice.reason and p.choice.reason.endswith("norms and biases"))
    notices = [f"{kept_f32} tensor(s) of fewer than 2 dimensions kept F32, as llama.cpp keeps them"] if kept_f32 else []
    return GGUFPlan(default.name, on_loss, shards, shard_names(len(shards)), warnings, notices)


def _without_casts(m: MappedTensor) -> None:
    """The ggml type is a GGUF tensor's one cast: a layout's own dtype steps are not replayed before it."""
    if m.casts:
        m.transforms = [t for t in m.transforms if not any(t is c for c in m.casts)]
        m.casts = []
        m.out_dtype = None


def _shards(planned: list[PlannedTensor], limit: int | None) -> list[list[PlannedTensor]]:
    """Fill files greedily in order, as gguf-split does; a tensor larger than the limit gets its own."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for p in planned:
        if limit and shards[-1] and size + p.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.nbytes
    return shards


def generic_metadata(config: dict[str, Any] | None, source_format: str) -> dict[str, Value]:
    """The generic family: its architecture named after the model's config (`model_type`), else the source format."""
    model_type = (config or {}).get("model_type")
    return {"general.architecture": string(model_type if isinstance(model_type, str) and model_type else source_format)}


def file_metadata(family: dict[str, Value], gguf_plan: GGUFPlan) -> dict[str, Value]:
    """The keys every file of this output carries: the family's, then alignment, file type and (when
    any tensor is quantized) the quantization version."""
    default = parse_type(gguf_plan.type_name)
    keys = {**family, "general.alignment": u32(ALIGNMENT), "general.file_type": u32(FILE_TYPES[default.name])}
    if any(p.choice.type.quantized for p in gguf_plan.tensors):
        keys["general.quantization_version"] = u32(QUANTIZATION_VERSION)
    return keys


def write(
    staging: Path,
    gguf_plan: GGUFPlan,
    metadata: dict[str, Value],
    algorithm: str,
    progress: Progress | None = None,
) -> list[WrittenGGUF]:
    """Write the plan's files into `staging`, one tensor at a time."""
    written = []
    total = len(gguf_plan.tensors)
    for i, (fname, shard) in enumerate(zip(gguf_plan.files, gguf_plan.shards, strict=True)):
        keys = {**metadata, **split_keys(i, len(gguf_plan.files), total)}
        items = [GGUFItem(p.name, p.shape, p.choice.type.id, p.nbytes, _producer(p, gguf_plan.on_loss)) for p in shard]
        written.append(write_gguf(staging / fname, keys, items, algorithm, progress))
    return written


def _producer(p: PlannedTensor, on_loss: str) -> Callable[[], Any]:
    return lambda: encoded(p.name, p.mapped.ref.array(), p.choice.type, on_loss, p.measured)


def written_tensors(gguf_plan: GGUFPlan, written: list[WrittenGGUF]) -> list[WrittenTensor]:
    """Each tensor as the manifest records it: GGUF name, ggml type, shape (numpy order), offsets in
    its file's data section and digest (the pipeline adds sources and transforms), and what writing it
    in its type cost: the type asked for and why another was taken, the block size, the error against
    the source, and what a narrowing float cast lost."""
    tensors = []
    for shard, w in zip(gguf_plan.shards, written, strict=True):
        for p, info, digest in zip(shard, w.tensors, w.digests, strict=True):
            t, lost = p.choice.type, p.measured.loss
            reason: QuantizationReason = {"reason": p.choice.reason} if p.choice.reason else {}
            record: TensorRecord = {
                "quantization": {
                    "type": t.ggml_name,
                    "type_id": t.id,
                    "block_size": t.block_size,
                    "requested": p.choice.requested.ggml_name,
                    **reason,
                    "source_dtype": p.mapped.ref.dtype.code,
                    "error": p.measured.to_json(math.prod(p.shape)),
                    "on_loss": gguf_plan.on_loss,
                    "overflowed": lost.overflowed,
                    "flushed": lost.flushed,
                }
            }
            if t.quantized or p.measured.max_abs or lost:
                why = f"written as {t.ggml_name}, which does not hold the source's values exactly"
                record.update({"lossy": True, "invertible": False, "not_invertible_because": why})
            offsets = (info.offset, info.offset + info.nbytes)
            tensors.append(WrittenTensor(p.name, w.name, t.ggml_name, p.shape, offsets, digest, [], record))
    return tensors

"""The ggml tensor types this tool writes to GGUF, with their ids and block geometry.

Ids are ggml's `enum ggml_type` (ggml.h); a block of `block_size` values takes `type_size` bytes, as
`ggml_type_traits` and the block structs of ggml-common.h say. K-quants group 256 values (QK_K) in a
super-block; the legacy quants 32. A row of a quantized tensor must be a whole number of blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from convert.errors import UsageError

QK_K = 256  # values in a K-quant super-block


@dataclass(frozen=True)
class GGMLType:
    name: str  # lower-case, as on the command line (`--type q4_k`); ggml spells it upper-case
    id: int  # enum ggml_type
    block_size: int  # values per block
    type_size: int  # bytes per block

    @property
    def quantized(self) -> bool:
        """Blocks with scales, as opposed to one float per value (f32, f16, bf16)."""
        return self.block_size > 1

    @property
    def ggml_name(self) -> str:
        return self.name.upper()

    def row_bytes(self, n_values: int) -> int:
        """Bytes of a row of `n_values` values (a whole number of blocks: the caller checks `fits`)."""
        return n_values // self.block_size * self.type_size

    def fits(self, n_values: int) -> bool:
        """Whether a row of `n_values` values is a whole number of this type's blocks."""
        return n_values > 0 and n_values % self.block_size == 0


_ALL = (
    GGMLType("f32", 0, 1, 4),
    GGMLType("f16", 1, 1, 2),
    GGMLType("q4_0", 2, 32, 2 + 16),  # f16 d; 32 nibbles
    GGMLType("q4_1", 3, 32, 2 + 2 + 16),  # f16 d, f16 m; 32 nibbles
    GGMLType("q5_0", 6, 32, 2 + 4 + 16),  # f16 d; 32 high bits; 32 nibbles
    GGMLType("q5_1", 7, 32, 2 + 2 + 4 + 16),  # f16 d, f16 m; high bits; nibbles
    GGMLType("q8_0", 8, 32, 2 + 32),  # f16 d; 32 int8
    GGMLType("q2_k", 10, QK_K, 16 + 64 + 2 + 2),  # 4-bit scale|min pairs; 2-bit quants; f16 d, dmin
    GGMLType("q3_k", 11, QK_K, 32 + 64 + 12 + 2),  # high-bit mask; 2-bit quants; 6-bit scales; f16 d
    GGMLType("q4_k", 12, QK_K, 2 + 2 + 12 + 128),  # f16 d, dmin; 6-bit scales and mins; nibbles
    GGMLType("q5_k", 13, QK_K, 2 + 2 + 12 + 32 + 128),  # as q4_k plus a high-bit plane
    GGMLType("q6_k", 14, QK_K, 128 + 64 + 16 + 2),  # low nibbles; 2 high bits; int8 scales; f16 d
    GGMLType("bf16", 30, 1, 2),
)

TYPES: dict[str, GGMLType] = {t.name: t for t in _ALL}
BY_ID: dict[int, GGMLType] = {t.id: t for t in _ALL}


def ggml_type(name: str) -> GGMLType:
    """The type called `name` (any case), or a usage error listing the types this tool writes."""
    try:
        return TYPES[name.lower()]
    except (KeyError, AttributeError):
        raise UsageError(f"unknown GGUF type {name!r}; choose one of {', '.join(TYPES)}") from None

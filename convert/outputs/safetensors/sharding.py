"""How tensors are spread over SafeTensors files: shards filled in order, named as Hugging Face names
them, and ordered inside a file as the reference writer orders them."""

from __future__ import annotations

from convert.hf_folder import SAFETENSORS_SINGLE
from convert.writer import WriteItem


def shard_items(items: list[WriteItem], max_shard_size: int | None) -> list[list[WriteItem]]:
    """Fill shards greedily in order; a tensor larger than the limit gets a shard of its own."""
    if not max_shard_size:
        return [items]
    shards: list[list[WriteItem]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def oversized(items: list[WriteItem], max_shard_size: int | None) -> list[str]:
    """A warning per tensor that cannot fit a shard (it is written alone, larger than asked)."""
    return [
        f"{it.name} ({it.nbytes:,} bytes) is larger than --max-shard-size ({max_shard_size:,} bytes): it has a shard of its own"
        for it in items
        if max_shard_size and it.nbytes > max_shard_size
    ]


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SAFETENSORS_SINGLE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def file_order(items: list[WriteItem]) -> list[WriteItem]:
    """The reference writer's order inside a file: larger alignment first, then by name."""
    return sorted(items, key=lambda it: (-it.dtype.itemsize, it.name))

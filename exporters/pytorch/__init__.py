"""PyTorch checkpoints, read without torch: torch.save zip and legacy files, TorchScript archives,
training checkpoints, and Hugging Face folders with pytorch_model.bin or its shards."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.options import Option
from convert.source import SourceModel
from exporters.shared.options import KEY

STRIP_PREFIX = Option(
    "strip_prefix",
    str,
    "auto",
    "Strip a wrapper's prefix from every name: auto strips DataParallel's `module.`, torch.compile's "
    "`_orig_mod.` (nested too) and a Lightning module's `model.` when every name has it, so names match the inner module.",
    metavar="auto|none|PREFIX",
)
TORCH_LEGACY_HEAD = b"\x8a\x0a"  # after PROTO n: LONG1 of 10 bytes, the legacy torch.save magic number


def sniff(probe: Probe) -> bool:
    if probe.is_dir:
        return bool(probe.names & {"pytorch_model.bin", "pytorch_model.bin.index.json"})
    head = probe.head
    if head.startswith(b"PK\x03\x04") and not probe.is_safetensors:
        names = probe.zip_names
        return names is None or any(n.endswith("/data.pkl") for n in names)  # unreadable: the reader says why
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[2:4] == TORCH_LEGACY_HEAD


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_pytorch

    return open_pytorch(path, options.value(KEY), options.value(STRIP_PREFIX))


READER = ReaderFace(
    kind="pytorch",
    command="pth-to-safetensors",
    extra=None,
    sniff=sniff,
    open=open_source,
    summary="Convert a PyTorch checkpoint (torch.save zip or legacy file, Lightning .ckpt, or a Hugging Face "
    "folder with pytorch_model.bin or its shards) into the folder OUT, without torch.",
    options=(KEY, STRIP_PREFIX),
    option_help={
        "key": "Dotted path of the dict holding the tensors (default: the first model state dict of "
        "state_dict, model_state_dict, model_state, model, ..., ema, teacher, else the root; "
        "optimizer, scheduler, scaler and RNG states are left out)."
    },
    suffixes=(".pt", ".pth", ".bin", ".ckpt"),
    short="Convert a PyTorch checkpoint or folder (no torch).",
    example="convert pth-to-safetensors model.pt out/ --layout burn",
)

"""What a training checkpoint holds beside the model, recognized by structure on unpickled records:
optimizer, LR scheduler, AMP grad scaler and RNG states (left out by default), and the candidate model
state dicts (`model`, `ema`, `teacher`, ...) of which one is converted.

Recognizing by structure, not by key name, is what makes `{"opt": adam.state_dict()}` as safe to
convert as Lightning's `optimizer_states`: the Adam moments never ride along with the weights.
"""

from __future__ import annotations

from typing import Any

from convert.pickle_reader import InertObject, NumpyArrayRecord, TensorRecord, record_parts
from exporters.pytorch.modules import is_module

# Model state dicts (or whole pickled modules) in the order one is preferred when a checkpoint holds several.
CANDIDATE_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "module",
    "ema_state_dict",
    "ema",
    "model_ema",
    "state_dict_ema",
    "ema_model",
    "teacher",
    "student",
)
# Checkpoints whose model entry is a wrapper module (LightningModule) around the model users load.
LIGHTNING_MARKERS = ("pytorch-lightning_version", "optimizer_states", "lr_schedulers", "callbacks")
_SCALER_KEYS = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
_TORCH_CPU_RNG_BYTES = 5056  # torch.get_rng_state(): mt19937 state as uint8
# DataParallel/DistributedDataParallel's `module.`, torch.compile's `_orig_mod.` (nested in either order
# when both wrap one model), a LightningModule's `model.` (Lightning checkpoints only, outermost).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_LIGHTNING_PREFIX = "model."


def training_state_kind(value: Any) -> str | None:
    """What training state `value` is (optimizer, scheduler, grad scaler, RNG), or None for model data."""
    if isinstance(value, (list, tuple)) and value:  # Lightning's optimizer_states: one level, never deeper
        kinds = {_single_kind(v) for v in value[:64]}
        return kinds.pop() if len(kinds) == 1 else None
    return _single_kind(value)


# Pickled training objects (never built: records of their class), by class prefix.
_TRAINING_CLASSES = (
    ("torch.optim.lr_scheduler.", "LR scheduler"),
    ("torch.optim.", "optimizer"),
    ("torch.cuda.amp.grad_scaler.", "grad scaler"),
    ("torch.amp.grad_scaler.", "grad scaler"),
)


def _single_kind(value: Any) -> str | None:
    if isinstance(value, InertObject):
        return next((kind for prefix, kind in _TRAINING_CLASSES if value.qualname.startswith(prefix)), None)
    if isinstance(value, TensorRecord):
        rng = value.dtype_code == "U8" and value.shape == (_TORCH_CPU_RNG_BYTES,)
        return "RNG state" if rng else None
    if not isinstance(value, dict):
        return None
    if (
        isinstance(value.get("state"), dict)
        and isinstance(value.get("param_groups"), list)
        and all(type(k) is int for k in value["state"])
    ):
        return "optimizer state"
    if "last_epoch" in value and any(k in value for k in ("base_lrs", "_last_lr", "_step_count")):
        return "LR scheduler state"
    if len(_SCALER_KEYS & set(value)) >= 3:
        return "grad scaler state"
    if value and all(_is_rng_leaf(v) for v in value.values()):
        return "RNG state"
    return None


def _is_rng_leaf(value: Any, depth: int = 0) -> bool:
    """torch/cuda generator bytes, numpy's ('MT19937', keys, pos, ...) and Python's (3, (625 ints), None),
    or a short list of them (per-device CUDA states)."""
    if isinstance(value, TensorRecord):
        return value.dtype_code == "U8" and len(value.shape) == 1
    if isinstance(value, (list, tuple)) and value:
        if value[0] == "MT19937" and len(value) >= 2 and isinstance(value[1], NumpyArrayRecord):
            return True
        if type(value[0]) is int and len(value) == 3 and isinstance(value[1], tuple) and len(value[1]) == 625:
            return True
        return depth == 0 and len(value) <= 64 and all(_is_rng_leaf(v, 1) for v in value)
    return False


_MAX_VISITS = 100_000


def holds_tensors(value: Any) -> bool:
    """Whether any tensor lies below `value`; each container is visited once (a pickle can share one
    list under many keys, nested: a walk without memory would take exponential time)."""
    seen: set[int] = set()
    stack = [value]
    while stack and len(seen) < _MAX_VISITS:
        node = stack.pop()
        if isinstance(node, TensorRecord):
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, InertObject):
            stack.extend(v for _, v in record_parts(node))
    return False


def candidate_keys(obj: dict[Any, Any]) -> list[str]:
    """Top-level entries that are model state dicts or whole pickled modules by name, best first."""
    return [
        k
        for k in CANDIDATE_KEYS
        if (isinstance(obj.get(k), dict) or is_module(obj.get(k)))
        and holds_tensors(obj[k])
        and training_state_kind(obj[k]) is None
    ]


def wrapper_prefix(names: list[str], checkpoint: Any, chosen_key: str | None) -> str | None:
    """The prefix the inner module's `load_state_dict` does not expect: the wrappers' prefixes every name
    carries, outermost first (`module.`, `_orig_mod.`, nested as DDP plus torch.compile give them), under
    a LightningModule's attribute (`model.`) when the checkpoint is Lightning's. None when there is
    nothing to strip."""
    if not names:
        return None
    lightning = isinstance(checkpoint, dict) and chosen_key == "state_dict" and any(m in checkpoint for m in LIGHTNING_MARKERS)
    prefix = _LIGHTNING_PREFIX if lightning and _all_carry(names, _LIGHTNING_PREFIX) else ""
    while step := next((p for p in _WRAPPER_PREFIXES if _all_carry(names, prefix + p)), None):
        prefix += step
    return prefix or None


def _all_carry(names: list[str], prefix: str) -> bool:
    return all(n.startswith(prefix) and len(n) > len(prefix) for n in names)

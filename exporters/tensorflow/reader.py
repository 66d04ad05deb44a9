"""TensorFlow SavedModel folders and TF1 and TF2 checkpoints (`.index` + `.data-*`), read without TensorFlow
(exporters/tensorflow/bundle.py): every variable is a span of a mapped data file, so memory stays
flat however large the checkpoint, and no TensorFlow start-up is paid.

A TF2 checkpoint keys variables by object-graph paths (`model/layer_with_weights-0/kernel/...`,
`_operations/3/cell/bias/...`) that say little; its object graph also records each variable's TF
name (`dense/kernel`, `bidirectional/forward_lstm/lstm_cell/kernel`), which names layers the way
Keras's `.h5` files do, so the same rules bring them to canonical form (exporters/shared/keras_naming/names.py).
Where TF names clash (a Keras 3 subclassed model names variables by the model only), the object
paths (`emb/embeddings`, `blocks/0/kernel`) name them instead.

A TF1 checkpoint (tf.compat.v1.train.Saver) keys variables by their TF names alone: the same rules
name them, and where they cannot name every tensor apart the checkpoint is refused, as no other
names exist (keeping the stored names would give Keras layouts under names that look canonical).
"""

from __future__ import annotations

import re
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import ConvertError, CorruptInputError, SourceNotFoundError, UnsupportedFormatError, install_hint
from convert.hashing import same_ranges
from convert.hf_folder import is_file
from convert.source import SourceModel
from convert.tensors import TensorRef
from exporters.shared.keras_naming.assemble import LayersFound, assemble
from exporters.shared.keras_naming.layers import KerasLayer, to_canonical
from exporters.shared.keras_naming.names import Named, components, drop_common_scope, group_named
from exporters.tensorflow.bundle import Bundle
from exporters.tensorflow.protos import parse
from exporters.tensorflow.training_state import SHADOW, averages, training_state

OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
_DATA = re.compile(r"\.data-[0-9]{5}-of-[0-9]{5}$")
# Keras 3's model.export saves every variable twice: under `variables` and again in this list. Only
# here is a variable with another's name and bytes a copy: two distinct weights may well agree (two
# zero-initialised biases that Keras 3 names both `bias`).
_EXPORT_COPIES = "_all_variables/"
# Children of the object graph that hold training state, not the model's weights.
_TRAINING_STATE = ("optimizer", "save_counter", "step", "global_step")
# Variables Keras keeps that are no weights: random-number generator state.
_NOT_WEIGHTS = re.compile(r"(^|/)seed_generator_state$")
# Why a checkpoint variable outside the model is not converted, by where it sits (first match wins).
_DROPPED_BECAUSE = (
    (re.compile(r"(^|/)\.OPTIMIZER_SLOT/|^optimizer/"), "optimizer state"),
    (re.compile(r"^(save_counter|step|global_step)/"), "training counter"),
    (re.compile(r"(^|/)keras_api/metrics/"), "metric state"),
    (re.compile(r"(^|/)seed_generator_state/"), "random-number generator state"),
)


def open_tensorflow(path: str | Path, key: str | None = None) -> SourceModel:
    """A SavedModel folder, or a TF2 checkpoint (prefix, `.index`/`.data-*` file, or its folder).
    `key`: the object holding the model in the checkpoint (default: `model` if present, else all but
    the optimizer)."""
    p = Path(path)
    prefix, fmt = _locate(p)
    _need_protobuf()
    bundle = Bundle(prefix, p.name)
    try:
        return _open(bundle, prefix, fmt, key)
    except BaseException:
        bundle.close()
        raise


def _open(bundle: Bundle, prefix: str, fmt: str, key: str | None) -> SourceModel:
    label = bundle.label
    entries = bundle.entries
    if OBJECT_GRAPH not in entries:
        return _open_tf1(bundle, prefix, fmt, key)
    variables, states, extras = _variables(_object_graph(bundle.string_scalar(OBJECT_GRAPH), label), key, label)
    by_tf_name: list[Named] = []
    by_object: list[Named] = []
    dropped: dict[str, str] = {}
    kept: dict[str, list[tuple[str, TensorRef]]] = {}  # TF name -> (checkpoint key, ref) of the copies kept
    for ckpt_key, tf_name, object_path in variables:
        entry = entries.get(ckpt_key)
        if entry is None:
            raise CorruptInputError(f"{label}: the object graph names {ckpt_key}, which the checkpoint lacks")
        if _NOT_WEIGHTS.search(tf_name) or _NOT_WEIGHTS.search(object_path):
            dropped[ckpt_key] = "random-number generator state"
            continue
        ref = bundle.tensor(entry)
        spare = ckpt_key.startswith(_EXPORT_COPIES)
        twin = next((k for k, other in kept.get(tf_name, []) if _same_bytes(other, ref)), None) if spare else None
        if twin is not None:
            dropped[ckpt_key] = f"a second copy of {twin} (the same name and bytes)"
            continue
        if not spare:
            kept.setdefault(tf_name, []).append((ckpt_key, ref))
        by_tf_name.append((components(tf_name or object_path), ref))
        by_object.append((components(object_path), ref))
    reached = {ckpt_key for ckpt_key, _, _ in variables}
    dropped.update({k: _state(k, states) or _why_dropped(k, key) for k in entries if k != OBJECT_GRAPH and k not in reached})
    layers, by_tf_names = _layers(drop_common_scope(by_tf_name), by_object, label)
    extras["names_from"] = "tf-names" if by_tf_names else "object-paths"
    files = [Path(prefix + ".index"), *bundle.shard_paths]
    return assemble(LayersFound(fmt, files, layers, extras=extras, closers=[bundle.close], dropped=dropped))


def _same_bytes(a: TensorRef, b: TensorRef) -> bool:
    """Two checkpoint variables hold the same bytes (read only when their name, dtype and shape agree),
    compared window by window in their shards: no copy of either is made (a variable partitioned
    other than along its first axis is assembled to be compared)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.ranges() and b.ranges():
        return same_ranges(a.ranges(), b.ranges())
    return bool(np.array_equal(a.array().reshape(-1).view(np.uint8), b.array().reshape(-1).view(np.uint8)))


def _state(ckpt_key: str, states: dict[str, str]) -> str | None:
    """Why a key is dropped when it is the model's saved state: an attribute's key, or one of the keys
    it saves under (a lookup table's `.../table` saves `.../table-keys` and `.../table-values`)."""
    return states.get(ckpt_key) or next((why for k, why in states.items() if ckpt_key.startswith(k + "-")), None)


def _why_dropped(ckpt_key: str, key: str | None) -> str:
    """Why a variable the model does not reach is not converted."""
    for pattern, why in _DROPPED_BECAUSE:
        if pattern.search(ckpt_key):
            return why
    return f"outside the checkpoint object {key!r}" if key else "not part of the model's object graph"


def _open_tf1(bundle: Bundle, prefix: str, fmt: str, key: str | None) -> SourceModel:
    """A TF1 name-based checkpoint (tf.compat.v1.train.Saver): its keys are the variables' TF names,
    brought to canonical form as a TF2 checkpoint's TF names are; training state is left out
    (exporters/tensorflow/training_state.py). `key`: the top-level scope holding the model, or
    `ExponentialMovingAverage`: the moving averages in place of the variables that have them."""
    label = bundle.label
    entries = bundle.entries
    dropped = training_state(entries)
    averaged = averages(entries) if key == SHADOW else {}
    scope = None if key == SHADOW else key
    scopes = {components(k)[0] for k in entries if components(k)}
    if key == SHADOW and not averaged:
        raise SourceNotFoundError(f"{label}: --key {SHADOW}, but no variable of the checkpoint has a moving average")
    if scope is not None and scope not in scopes:
        raise SourceNotFoundError(f"{label}: no scope {scope!r} in the TF1 checkpoint (there: {sorted(scopes)[:20]})")
    for variable, shadow in averaged.items():
        del dropped[shadow]
        dropped[variable] = f"replaced by its moving average {shadow} (--key {SHADOW})"
    named: list[Named] = []
    for ckpt_key, entry in entries.items():
        if ckpt_key in averaged:  # its moving average, under its name
            entry = entries[averaged[ckpt_key]]
        elif ckpt_key in dropped:
            continue
        elif scope is not None and components(ckpt_key)[:1] != [scope]:
            dropped[ckpt_key] = f"outside the checkpoint scope {scope!r}"
            continue
        named.append((components(ckpt_key), bundle.tensor(entry)))
    if not named:
        where = f"under scope {key!r}, " if key is not None else ""
        raise UnsupportedFormatError(
            f"{label}: a TF1 checkpoint with no model weights ({where}only training state: "
            f"{', '.join(sorted(dropped)[:4]) or 'no variables'})"
        )
    layers, problem = _tf_name_layers(drop_common_scope(named), label)
    if layers is None:
        raise UnsupportedFormatError(
            f"{label}: a TF1 checkpoint whose variable names do not name every tensor apart ({problem}), "
            "and it has no object graph to name them otherwise"
        )
    extras: dict[str, Any] = {"names_from": "tf1-names", **({"key": key} if key is not None else {})}
    files = [Path(prefix + ".index"), *bundle.shard_paths]
    return assemble(LayersFound(fmt, files, layers, extras=extras, closers=[bundle.close], dropped=dropped))


def _tf_name_layers(named: list[Named], label: str) -> tuple[list[KerasLayer] | None, str]:
    """Layers by TF names if those name every tensor apart, else (None, why not)."""
    try:
        layers = group_named(named, None, label)
        names = [t.name for t in to_canonical(layers).tensors]
    except ConvertError as exc:
        return None, str(exc).removeprefix(f"{label}: ")
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    return (layers, "") if not twice else (None, f"two tensors would both be {twice[0]!r}")


def _layers(by_tf_name: list[Named], by_object: list[Named], label: str) -> tuple[list[KerasLayer], bool]:
    """Layers by TF names when those name every tensor apart, else by object paths; (layers, by TF names)."""
    layers, _ = _tf_name_layers(by_tf_name, label)
    if layers is not None:
        return layers, True
    return group_named(by_object, None, label), False


def _need_protobuf() -> None:
    try:
        import crc32c  # noqa: F401  (the data files' checksums)
        from google.protobuf import message_factory  # noqa: F401  (what exporters.tensorflow.protos builds on)
    except ImportError:
        raise UnsupportedFormatError(
            f"reading SavedModels and TF checkpoints needs protobuf and crc32c: {install_hint('tensorflow')}"
        ) from None


def _locate(p: Path) -> tuple[str, str]:
    """(checkpoint prefix, format) for a SavedModel folder, a checkpoint folder, prefix or file."""
    if p.is_dir():
        if (p / "saved_model.pb").is_file():
            prefix = p / "variables" / "variables"
            if not Path(f"{prefix}.index").is_file():
                raise SourceNotFoundError(f"{p}: a SavedModel without variables/variables.index")
            return str(prefix), "tf-savedmodel"
        indexes = sorted(p.glob("*.index"))
        latest = _latest_from_state(p)
        if latest is None and len(indexes) != 1:
            raise SourceNotFoundError(f"{p}: no saved_model.pb, and not one checkpoint (.index) in this folder")
        return latest or str(indexes[0])[: -len(".index")], "tf-checkpoint"
    name = str(p)
    if name.endswith(".index"):
        name = name[: -len(".index")]
    name = _DATA.sub("", name)
    if not Path(name + ".index").is_file():
        if p.is_file():
            raise UnsupportedFormatError(
                f"{p.name}: not a TF checkpoint (.index, .data-*) or SavedModel folder (for Keras files: keras-to-safetensors)"
            )
        raise SourceNotFoundError(f"no such TensorFlow checkpoint or SavedModel: {p}")
    return name, "tf-checkpoint"


def _latest_from_state(folder: Path) -> str | None:
    """The checkpoint a folder's `checkpoint` state file names (model_checkpoint_path: "ckpt-3")."""
    state = folder / "checkpoint"
    if not state.is_file() or state.stat().st_size > 1 << 20:
        return None
    match = re.search(r'^model_checkpoint_path:\s*"([^"\n]+)"', state.read_text("utf-8", "replace"), re.M)
    if match is None or "/" in match[1] or "\\" in match[1] or not is_file(folder / f"{match[1]}.index"):
        return None
    return str(folder / match[1])


def _object_graph(data: bytes, label: str) -> Any:
    graph = parse("TrackableObjectGraph", data, f"{label}: damaged object graph")
    if not graph.nodes:
        raise CorruptInputError(f"{label}: empty object graph")
    return graph


def _variables(graph: Any, key: str | None, label: str) -> tuple[list[tuple[str, str, str]], dict[str, str], dict[str, Any]]:
    """(checkpoint key, TF name, object path) of every variable under the model, each once, by its
    shortest path, training state (the optimizer, counters) left out; the model's saved state that
    is no variable (a lookup table's keys), checkpoint key -> why it is dropped; the extras."""
    nodes = graph.nodes
    children = {c.local_name: c.node_id for c in nodes[0].children}
    extras: dict[str, Any] = {}
    key = key if key is not None else ("model" if "model" in children else None)
    if key is None:
        start, skipped = 0, [n for n in children if n in _TRAINING_STATE]
    elif key in children:
        start, skipped = children[key], [n for n in children if n != key]
        extras["key"] = key
    else:
        raise SourceNotFoundError(f"{label}: no object {key!r} in the checkpoint (there: {sorted(children)[:20]})")
    if skipped:
        extras["skipped"] = sorted(skipped)
    found: list[tuple[str, str, str]] = []
    states: dict[str, str] = {}
    seen = {start}
    queue: deque[tuple[int, tuple[str, ...]]] = deque([(start, ())])
    while queue:
        node_id, path = queue.popleft()
        if not 0 <= node_id < len(nodes):
            raise CorruptInputError(f"{label}: object graph refers to node {node_id}, which it lacks")
        node = nodes[node_id]
        for attr in node.attributes:
            if attr.name == "VARIABLE_VALUE":
                found.append((attr.checkpoint_key, attr.full_name, "/".join(p.lstrip("_") or p for p in path)))
            else:
                states[attr.checkpoint_key] = f"saved state that is no variable ({attr.name})"
        for child in node.children:
            if (
                child.local_name in _TRAINING_STATE
                or child.node_id in seen
                or (path[-1:], child.local_name) == (("keras_api",), "metrics")
            ):  # a compiled model's metric accumulators: no weights
                continue
            seen.add(child.node_id)
            queue.append((child.node_id, path + (child.local_name,)))
    return found, states, extras

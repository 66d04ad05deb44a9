"""Keras models read with h5py and the zip/JSON in the file, never with TensorFlow or Keras:
Keras 3 `.keras` and `.weights.h5`, Keras 2 / tf.keras `.h5` (full models and weights only), and
Hugging Face folders holding `tf_model.h5` (or its shards).

Where the file carries the model config (`.keras`, a full `.h5`), layer types come from it; where it
does not, from the variables' names and shapes (exporters/shared/keras_naming/names.py). Either way each layer is
brought to canonical form by exporters/shared/keras_naming/layers.py, lazily.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convert.documents import parse_json
from convert.errors import CorruptInputError, SourceNotFoundError, UnsupportedFormatError, UsageError
from convert.hf_folder import SIDECAR_MAX_BYTES, cross_check, hf_sidecars, index_shards, read_config, read_json
from convert.source import SourceModel
from convert.tensors import TensorRef
from convert.zip_members import ZIP_MAGIC, member_offset, open_zip
from exporters.keras.h5 import H5_MAGIC, MAX_DEPTH, MAX_FILTER_RATIO, H5Source
from exporters.shared.keras_naming.assemble import LayersFound, assemble
from exporters.shared.keras_naming.config import ConfigLayer, layers_of, scrub
from exporters.shared.keras_naming.layers import KerasLayer
from exporters.shared.keras_naming.names import (
    Named,
    components,
    group_named,
    infer_kind,
    kind_by_shapes,
    kind_from_key,
    layer_weights,
    numbered_roles,
)

KERAS_CONFIG = "config.json"
KERAS_WEIGHTS = "model.weights.h5"
KERAS_METADATA = "metadata.json"
HF_TF_WEIGHTS = "tf_model.h5"
HF_TF_INDEX = "tf_model.h5.index.json"
_STRUCTURAL = ("cell", "forward_layer", "backward_layer")  # parts of a layer, not layers (Keras 3 files)
_NOT_MODEL = ("optimizer",)  # top-level groups of a Keras 3 weights file that hold training state


def open_keras(path: str | Path, config: str | Path | None = None, max_inflated: int | None = None) -> SourceModel:
    """Open a Keras file or a Hugging Face TF folder. `config`: the model config for a Keras 3
    `.weights.h5` (a `.keras` file, or a JSON file as `model.to_json()` or config.json writes it);
    `max_inflated`: the bytes each HDF5 file's compressed datasets may inflate to (None: the default)."""
    p = Path(path)
    if not p.exists():
        raise SourceNotFoundError(f"no such file or folder: {p}")
    opened = LayersFound("", [], [])
    try:
        if p.is_dir():
            hf_config = _open_hf_folder(p, opened, max_inflated)
            return assemble(opened, sidecars=hf_sidecars(p, exclude={HF_TF_INDEX}), config=hf_config)
        with open(p, "rb") as fh:
            head = fh.read(len(H5_MAGIC))
        if head[:4] == ZIP_MAGIC:
            _open_keras_zip(p, opened, max_inflated)
        elif head == H5_MAGIC:
            _open_h5_file(p, H5Source(p, max_inflated=max_inflated), opened, _given_config(config))
        else:
            raise UnsupportedFormatError(f"{p.name}: not a Keras file (neither a .keras zip nor HDF5)")
        return assemble(opened, config=scrub(opened.model_config) if opened.model_config else None)
    except BaseException:
        for close in opened.closers:
            close()
        raise


# --- files --------------------------------------------------------------------------------------


def _open_keras_zip(path: Path, opened: LayersFound, max_inflated: int | None) -> None:
    """Keras 3 `.keras`: config.json and model.weights.h5 (read in place when stored uncompressed)."""
    zf = open_zip(path)
    with zf:
        infos = {info.filename: info for info in zf.infolist()}
        if KERAS_CONFIG not in infos or KERAS_WEIGHTS not in infos:
            raise UnsupportedFormatError(
                f"{path.name}: a zip, but not a .keras model ({KERAS_CONFIG} and "
                f"{KERAS_WEIGHTS} expected; for a torch checkpoint use pth-to-safetensors)"
            )
        model = _zip_json(path, zf, infos[KERAS_CONFIG])
        metadata = _zip_json(path, zf, infos[KERAS_METADATA]) if KERAS_METADATA in infos else {}
        info = infos[KERAS_WEIGHTS]
        label = f"{path.name}:{KERAS_WEIGHTS}"
        if info.compress_type == zipfile.ZIP_STORED:
            h5 = H5Source(path, member_offset(path, info), info.file_size, label, max_inflated)
        else:
            h5 = H5Source(_extract(path, zf, info, opened), label=label, max_inflated=max_inflated)
    opened.format, opened.files, opened.model_config = "keras-v3", [path], _model_config(model, path.name)
    opened.closers.append(h5.close)
    opened.extras["keras_version"] = metadata.get("keras_version") if isinstance(metadata, dict) else None
    opened.layers = _v3_layers(h5, layers_of(opened.model_config), opened)


def _open_h5_file(path: Path, h5: H5Source, opened: LayersFound, given: dict[str, Any] | None) -> None:
    """A Keras 3 `.weights.h5`, or a Keras 2 `.h5`: full model (model_config) or weights only."""
    opened.closers.append(h5.close)
    opened.files.append(path)
    root = h5.root
    opened.extras["keras_version"] = h5.text(root, "keras_version")
    keys = set(h5.keys(root))
    if "model_weights" in keys and h5.text(root, "model_config") is not None:
        opened.format = "keras-h5"
        opened.model_config = _model_config(_loads(h5.text(root, "model_config"), h5.label), h5.label)
        opened.layers = _legacy_layers(h5, h5.child(root, "model_weights"), layers_of(opened.model_config))
        if "optimizer_weights" in keys:  # a compiled model saved with its optimizer: each slot accounted for
            opened.dropped.update(
                dict.fromkeys(_arrays_below(h5, h5.child(root, "optimizer_weights"), "optimizer_weights", 1), "optimizer state")
            )
    elif h5.text_list(root, "layer_names") is not None:
        opened.format = "keras-h5-weights"
        opened.model_config = given
        opened.layers = _legacy_layers(h5, root, layers_of(given) if given else None)
    elif keys & {"layers", "vars"} or given is not None:
        opened.format = "keras-v3-weights"
        opened.model_config = given
        opened.layers = _v3_layers(h5, layers_of(given) if given else None, opened)
    else:
        raise UnsupportedFormatError(
            f"{h5.label}: an HDF5 file, but not one Keras wrote (no model_weights, layer_names or layers)"
        )


def _open_hf_folder(folder: Path, opened: LayersFound, max_inflated: int | None) -> dict[str, Any] | None:
    """A Hugging Face TF folder: tf_model.h5, or its shards listed in tf_model.h5.index.json."""
    if (folder / "saved_model.pb").is_file():
        raise UnsupportedFormatError(f"{folder.name}: a TensorFlow SavedModel; convert it with tf-to-safetensors")
    expected: dict[Path, set[str]] = {}  # each shard's weights, as the index places them
    if (folder / HF_TF_INDEX).is_file():
        expected = index_shards(folder / HF_TF_INDEX)
        shards = list(expected)
    elif (folder / HF_TF_WEIGHTS).is_file():
        shards = [folder / HF_TF_WEIGHTS]
    else:
        raise SourceNotFoundError(f"{folder}: no {HF_TF_WEIGHTS} or {HF_TF_INDEX} in this folder")
    named: list[Named] = []
    for shard in shards:
        h5 = H5Source(shard, max_inflated=max_inflated)
        opened.closers.append(h5.close)
        opened.files.append(shard)
        if shard in expected:
            stored = set(h5.text_list(h5.root, "layer_names") or [])
            cross_check(shard.name, {_shard_weight_name(n) for n in expected[shard]}, stored)
        named += _legacy_named(h5, h5.root)
    opened.format = "hf-tf-sharded" if len(shards) > 1 else "hf-tf"
    opened.layers = group_named(named, None, folder.name)
    return read_config(folder)


def _shard_weight_name(indexed: str) -> str:
    """The name a Hugging Face TF shard stores a weight under: the index names it with the model's
    name first (`tf_bert_model/bert/...`), the shard without it, except a name with one component or
    holding "model." (transformers' save_pretrained and strip_model_name_and_prefix)."""
    if "model." in indexed or "/" not in indexed:
        return indexed
    return indexed.split("/", 1)[1]


# --- Keras 2 / legacy h5 -------------------------------------------------------------------------


def _legacy_layers(h5: H5Source, group: Any, config_layers: list[ConfigLayer] | None) -> list[KerasLayer]:
    known = {layer.path for layer in config_layers or []}
    return group_named(_legacy_named(h5, group, known), config_layers, h5.label)


def _legacy_named(h5: H5Source, group: Any, known: set[tuple[str, ...]] | None = None) -> list[Named]:
    """Every weight listed by `layer_names` and each layer's `weight_names`, named from its layer on
    (`known`: the config's layer paths, see `layer_weights`). (Hugging Face's TF shards list the weights
    themselves in `layer_names`.)"""
    named: list[Named] = []
    for layer in h5.text_list(group, "layer_names") or []:
        obj = h5.resolve(group, layer)
        if not h5.is_group(obj):
            named.append((components(layer), h5.tensor(obj, obj.name.lstrip("/"))))
            continue
        weights = h5.text_list(obj, "weight_names") or []
        datasets = [h5.resolve(obj, weight) for weight in weights]
        names = layer_weights(layer, [components(weight) for weight in weights], known or set())
        named += [(parts, h5.tensor(dataset, dataset.name.lstrip("/"))) for parts, dataset in zip(names, datasets, strict=True)]
    if "top_level_model_weights" in h5.keys(group):
        top = h5.child(group, "top_level_model_weights")
        for weight in h5.text_list(top, "weight_names") or []:
            dataset = h5.resolve(top, weight)
            named.append((components(weight), h5.tensor(dataset, dataset.name.lstrip("/"))))
    return named


# --- Keras 3 weights files -----------------------------------------------------------------------


@dataclass
class _Vars:
    """One `vars` group of a Keras 3 weights file: a layer's (or its cell's) numbered variables."""

    keys: tuple[str, ...]  # the layer's groups, e.g. ("layers", "bidirectional")
    names: tuple[str, ...]  # the layer's path: Keras names in layer lists, attribute names elsewhere
    struct: tuple[str, ...]  # the part of the layer they belong to, e.g. ("forward_layer", "cell")
    refs: list[TensorRef]
    hint: str  # the layer's own name (its vars/@name), which Keras derives from the class unless told


def _v3_layers(h5: H5Source, config_layers: list[ConfigLayer] | None, opened: LayersFound) -> list[KerasLayer]:
    found: list[_Vars] = []
    skipped: list[str] = []
    _walk_v3(h5, h5.root, (), (), (), "", found, skipped, 0)
    if skipped:
        opened.extras["skipped"] = skipped
        for name in skipped:  # training state: each of its arrays accounted for, with the reason
            opened.dropped.update(dict.fromkeys(_arrays_below(h5, h5.child(h5.root, name), name, 1), f"{name} state"))
    by_keys = {layer.keys: layer for layer in config_layers or []}
    order = {layer.keys: i for i, layer in enumerate(config_layers or [])}
    merged: dict[tuple[str, ...], KerasLayer] = {}
    for group in sorted(found, key=lambda g: order.get(g.keys, len(order))):
        known = by_keys.get(group.keys)
        path = known.path if known else group.names
        kind = (
            known.kind
            if known
            else (
                kind_from_key(*group.keys[-1:], group.hint)
                or (None if group.struct else kind_by_shapes([r.shape for r in group.refs]))
            )
        )
        where = ".".join(path) or "(model)"
        roles = numbered_roles(kind, group.struct, len(group.refs), known.config if known else None, where)
        layer = merged.setdefault(group.keys, KerasLayer(path, kind, {}, known.config if known else {}, known is None))
        layer.weights.update(zip(roles, group.refs, strict=True))
    for layer in merged.values():
        if layer.kind is None:
            layer.kind = infer_kind(layer.path, layer.weights)
    return list(merged.values())


def _walk_v3(
    h5: H5Source,
    group: Any,
    keys: tuple[str, ...],
    names: tuple[str, ...],
    struct: tuple[str, ...],
    hint: str,
    found: list[_Vars],
    skipped: list[str],
    depth: int,
) -> None:
    """Keras keys a layer list's items by class (`layers/dense_1`) and a subclassed model's layers by
    attribute (`emb`); each layer's `vars` group carries its name."""
    if depth > MAX_DEPTH:
        raise CorruptInputError(f"{h5.label}: groups nested deeper than {MAX_DEPTH} levels")
    for key, sub in h5.groups(group):
        if key == "vars":
            refs = _numbered(h5, sub)
            if refs:
                found.append(_Vars(keys, names, struct, refs, hint))
        elif depth == 0 and key in _NOT_MODEL:
            skipped.append(key)
        elif key == "layers":
            _walk_v3(h5, sub, keys + (key,), names, struct, hint, found, skipped, depth + 1)
        elif key in _STRUCTURAL:
            _walk_v3(h5, sub, keys, names, struct + (key,), hint, found, skipped, depth + 1)
        else:
            own = h5.child(sub, "vars") if "vars" in h5.keys(sub) else None
            layer_name = (h5.text(own, "name") if own is not None else None) or key
            name = layer_name if keys[-1:] == ("layers",) else key
            _walk_v3(h5, sub, keys + (key,), names + (name,), (), layer_name, found, skipped, depth + 1)


def _arrays_below(h5: H5Source, group: Any, where: str, depth: int) -> list[str]:
    """The datasets under a group, by path."""
    if depth > MAX_DEPTH:
        raise CorruptInputError(f"{h5.label}: groups nested deeper than {MAX_DEPTH} levels")
    found = []
    for key in h5.keys(group):
        child = h5.child(group, key)
        found += _arrays_below(h5, child, f"{where}/{key}", depth + 1) if h5.is_group(child) else [f"{where}/{key}"]
    return found


def _numbered(h5: H5Source, group: Any) -> list[TensorRef]:
    keys = h5.keys(group)
    if sorted(keys, key=lambda k: int(k) if k.isdecimal() else -1) != [str(i) for i in range(len(keys))]:
        raise CorruptInputError(f"{h5.label}: {group.name} holds {sorted(keys)[:5]}, not variables 0..{len(keys) - 1}")
    return [h5.tensor(ds, ds.name.lstrip("/")) for ds in (h5.child(group, str(i)) for i in range(len(keys)))]


# --- configs and zip members ---------------------------------------------------------------------


def _given_config(config: str | Path | None) -> dict[str, Any] | None:
    """--config: a `.keras` file, or a JSON model config (model.to_json(), config.json)."""
    if config is None:
        return None
    p = Path(config)
    if not p.is_file():
        raise UsageError(f"--config {p}: no such file")
    with open(p, "rb") as fh:
        zipped = fh.read(4) == ZIP_MAGIC
    if not zipped:
        return _model_config(read_json(p), p.name)
    try:
        with zipfile.ZipFile(p) as zf:
            info = zf.getinfo(KERAS_CONFIG)
            return _model_config(_zip_json(p, zf, info), p.name)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise UsageError(f"--config {p}: not a .keras file ({exc})") from None


def _model_config(doc: Any, label: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("class_name"), str) or not isinstance(doc.get("config"), dict):
        raise CorruptInputError(f"{label}: the model config is not a Keras config (class_name, config)")
    return doc


def _loads(text: str | None, label: str) -> Any:
    return parse_json(text or "", f"{label}: model config", CorruptInputError)


def _zip_json(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.file_size > SIDECAR_MAX_BYTES:
        raise CorruptInputError(f"{path.name}: {info.filename} declares {info.file_size} bytes")
    try:
        return _loads(zf.read(info).decode("utf-8"), f"{path.name}:{info.filename}")
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise CorruptInputError(f"{path.name}: cannot read {info.filename} ({exc})") from None


def _extract(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, opened: LayersFound) -> Path:
    """A compressed member, inflated into a temporary file removed when the source closes. Only
    deflate (what Keras writes): bzip2 and LZMA inflate by millions, and do it in one call. The
    output is counted as it comes, against the ratio to the compressed bytes the file really holds."""
    member_offset(path, info)
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise UnsupportedFormatError(
            f"{path.name}: {info.filename} is compressed with zip method "
            f"{info.compress_type}; Keras writes stored or deflated members"
        )
    budget = max(info.compress_size, 1) * MAX_FILTER_RATIO
    if info.file_size > budget:
        raise CorruptInputError(f"{path.name}: {info.filename} claims {info.file_size} bytes from {info.compress_size}")
    fd, name = tempfile.mkstemp(suffix=".weights.h5")
    opened.closers.append(lambda: os.unlink(name))
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while block := src.read(1 << 20):
                budget -= len(block)
                if budget < 0:
                    raise CorruptInputError(
                        f"{path.name}: {info.filename} inflates past {MAX_FILTER_RATIO}x "
                        f"its {info.compress_size} compressed bytes"
                    )
                out.write(block)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CorruptInputError(f"{path.name}: cannot inflate {info.filename} ({exc})") from None
    return Path(name)

"""The typed manifest model (convert/manifest_model.py) and schemas/manifest.schema.json cannot drift.

Both ways, statically: every key of every TypedDict is a property of the schema's object at the same
place, with a compatible JSON type and the same required-ness, and every schema property is a key of
the model. Keys the model knows beyond the schema are allowed only where the schema leaves the object
open, and only those listed in BEYOND_SCHEMA. And at run time: a real conversion's manifest holds no
key the model does not name.
"""

# No `from __future__ import annotations`: the TypedDict in test_the_check_sees_drift must see NotRequired.

import types as pytypes
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import numpy as np
import torch

from convert import manifest as manifest_mod, manifest_model
from convert.dtypes import dtype as lookup_dtype
from convert.mapping import MappedTensor
from convert.pipeline import tensor_entry
from convert.tensors import TensorRef
from convert.writer import WrittenTensor
from tests.support import read_manifest, run_cli
from tests.support.rust import SCHEMA, resolve, types

# Written by the converter where the schema leaves the object open; the Rust crate does not read them.
BEYOND_SCHEMA = {
    "manifest.graph": {"ir_version", "operators", "simplifier"},
    "manifest.graph.validation": {"runtime", "inputs", "runs", "passed"},
    "manifest.tensors[].transforms[]": set(get_type_hints(manifest_model.Transform)) - {"op"},
}
JSON_KIND = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def members(annotation: Any) -> list[Any]:
    return list(get_args(annotation)) if get_origin(annotation) in (Union, pytypes.UnionType) else [annotation]


def kind(annotation: Any) -> str | None:
    """The JSON type a Python annotation stands for (None: Any, which the check does not judge)."""
    if annotation is Any:
        return None
    if is_typeddict(annotation) or get_origin(annotation) is dict:
        return "object"
    if get_origin(annotation) is list:
        return "array"
    if get_origin(annotation) is Literal:
        return JSON_KIND[type(get_args(annotation)[0])]
    return JSON_KIND[annotation]


def schema_kinds(node: dict[str, Any]) -> set[str]:
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else node["enum"]
        return {JSON_KIND[type(v)] for v in values}
    return set(types(node))


def problems(annotation: Any, node: dict[str, Any], where: str) -> list[str]:
    """How the annotation and the schema node disagree (empty: they agree)."""
    node = resolve(node)
    parts = members(annotation)
    if any(p is Any for p in parts):
        return []
    found = []
    wanted, have = schema_kinds(node), {kind(p) for p in parts}
    if wanted and have != wanted:
        found.append(f"{where}: the model says {sorted(map(str, have))}, the schema {sorted(wanted)}")
    if "enum" in node or "const" in node:
        values = set(node.get("enum", [node.get("const")]))
        literals = {v for p in parts if get_origin(p) is Literal for v in get_args(p)}
        if literals and literals != values:
            found.append(f"{where}: the model allows {sorted(literals)}, the schema {sorted(values)}")
    for part in parts:
        if is_typeddict(part):
            found += object_problems(part, node, where)
        elif get_origin(part) is dict:
            found += open_object_problems(get_args(part)[1], node, where)
        elif get_origin(part) is list:
            items = node.get("items")
            if items is None:
                found.append(f"{where}: the schema does not say what its items are")
            else:
                found += problems(get_args(part)[0], items, f"{where}[]")
    return found


def object_problems(model: Any, node: dict[str, Any], where: str) -> list[str]:
    properties = node.get("properties")
    if properties is None:
        return [f"{where}: the model types an object the schema leaves open"]
    hints = get_type_hints(model)
    found = [f"{where}.{k}: in the schema, not in the model" for k in properties.keys() - hints.keys()]
    extra = hints.keys() - properties.keys()
    allowed = BEYOND_SCHEMA.get(where, set()) if node.get("additionalProperties") is not False else set()
    found += [f"{where}.{k}: in the model, not in the schema" for k in extra - allowed]
    required = set(node.get("required", []))
    model_required = set(model.__required_keys__) & properties.keys()
    if required != model_required:
        found.append(f"{where}: the schema requires {sorted(required)}, the model {sorted(model_required)}")
    for key in hints.keys() & properties.keys():
        found += problems(hints[key], properties[key], f"{where}.{key}")
    return found


def open_object_problems(value: Any, node: dict[str, Any], where: str) -> list[str]:
    if "properties" in node:
        return [f"{where}: the schema names its properties, the model does not"]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        return problems(value, extra, f"{where}{{}}")
    return [] if value is Any else [f"{where}: the model types values the schema leaves open"]


def test_model_and_schema_agree_both_ways() -> None:
    assert problems(manifest_model.Manifest, SCHEMA, "manifest") == []


def test_the_check_sees_drift() -> None:
    """The checker itself: a missing key, an extra key, a wrong type, a wrong required-ness."""

    class File(typing.TypedDict):
        path: str
        bytes: str
        digest: typing.NotRequired[str]
        mtime: int

    found = problems(File, SCHEMA["$defs"]["file"], "file")
    assert any("file.bytes" in p for p in found)
    assert any("file.mtime: in the model, not in the schema" in p for p in found)
    assert any("requires" in p for p in found)
    assert problems(list[File], {"type": "array"}, "x") == ["x: the schema does not say what its items are"]


def unknown_keys(value: Any, annotation: Any, where: str) -> list[str]:
    """Keys of a manifest value that the model does not name (its Any parts are not judged)."""
    for part in members(annotation):
        if is_typeddict(part) and isinstance(value, dict):
            hints = get_type_hints(part)
            found = [f"{where}.{k}" for k in value.keys() - hints.keys()]
            return found + [p for k in value.keys() & hints.keys() for p in unknown_keys(value[k], hints[k], f"{where}.{k}")]
        if get_origin(part) is list and isinstance(value, list):
            return [p for item in value for p in unknown_keys(item, get_args(part)[0], f"{where}[]")]
        if get_origin(part) is dict and isinstance(value, dict):
            return [p for k, v in value.items() for p in unknown_keys(v, get_args(part)[1], f"{where}{{}}")]
    return []


def test_a_conversion_writes_only_what_the_model_names(tmp_path: Path) -> None:
    """A transposing layout, a cast and tied tensors: transforms, ties and architecture all filled."""
    weight = torch.randn(4, 3)
    state = {"embed.weight": weight, "head.weight": weight, "fc.weight": torch.randn(2, 3), "fc.bias": torch.randn(2)}
    torch.save(state, tmp_path / "model.pt")
    out = tmp_path / "out"
    code, _, err = run_cli("pth-to-safetensors", tmp_path / "model.pt", out, "--layout", "burn", "--dtype", "f16")
    assert code == 0, err
    manifest = read_manifest(out)
    assert any(t["transforms"] for t in manifest["tensors"]) and manifest["architecture"]["modules"]
    assert manifest["target"]["ties"]["tied"]
    assert unknown_keys(manifest, manifest_model.Manifest, "manifest") == []


def test_what_an_output_records_reaches_the_manifest_whole() -> None:
    """A tensor's TensorRecord and an output's Sections are parts of the model, and the builders copy
    every key of them (they copy key by key: mypy checks TypedDict updates strictly)."""
    entry_hints, manifest_hints = get_type_hints(manifest_model.TensorEntry), get_type_hints(manifest_model.Manifest)
    for part, whole in ((manifest_model.TensorRecord, entry_hints), (manifest_model.Sections, manifest_hints)):
        assert {k: whole.get(k) for k in get_type_hints(part)} == get_type_hints(part)

    ref = TensorRef("w", lookup_dtype("F32"), (2,), lambda: np.zeros(2, np.float32))
    record = {key: f"{key}-value" for key in get_type_hints(manifest_model.TensorRecord)}
    written = WrittenTensor("w", "model.gguf", "Q8_0", (2,), (0, 34), "ab" * 32, [], record)
    entry = tensor_entry(MappedTensor("w", ref, [ref]), written)
    assert {k: entry.get(k) for k in record} == record

    sections = {key: f"{key}-value" for key in get_type_hints(manifest_model.Sections)}
    doc = manifest_mod.build(
        "blake3",
        manifest_mod.SourceRecord("pytorch-zip", [], {}),
        manifest_mod.TargetRecord("safetensors", "pytorch", "builtin:pytorch", None, {}, [], None),
        manifest_mod.Contents([], []),
        {"inferred": True, "modules": [], "unknown": [], "config": None},
        sections,
    )
    assert list(doc)[-len(sections) :] == list(sections) and {k: doc.get(k) for k in sections} == sections

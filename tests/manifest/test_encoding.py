"""The manifest's encoding (indented, one record per line, written by the C encoder) and the compiled
validation of shipped schemas (jsonschema-rs answers first, jsonschema judges what it rejects): the
same document and the same verdicts as the pure-Python encoder and jsonschema alone."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from convert import manifest as manifest_mod
from convert.documents import compiled, schema_text
from convert.errors import VerificationError
from tests.support import REPO, convert_api, read_manifest, run_cli


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ModuleList of tiny layers (a module tree in the architecture, records in every list)."""
    folder = tmp_path_factory.mktemp("manifest")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2), torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 2))
    torch.save(model, folder / "model.pt")
    convert_api(folder / "model.pt", folder / "out")
    return folder / "out"


def test_manifest_is_indented_one_record_per_line(converted: Path) -> None:
    text = (converted / "manifest.json").read_text(encoding="utf-8")
    doc = read_manifest(converted)
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}" and text.endswith("}\n")
    assert all(line.startswith(" ") for line in lines[1:-1])
    assert ' "tensors": [' in lines
    for record in doc["tensors"]:
        assert f"  {json.dumps(record, ensure_ascii=False)}" in (line.rstrip(",") for line in lines)
    assert doc["architecture"]["modules"], "the fixture records its module tree"


AWKWARD: dict[Any, Any] = {
    "text": 'caf\u00e9 \u2603 "quoted" \\ tab\t newline\n',
    "surrogate": "lone \udc80 half",
    "numbers": [0, -1, 2**70, 1.5, 1e-300, float("nan"), float("inf")],
    "keys": {7: "int", 2.5: "float", True: "bool", None: "none", "": "empty"},
    "empty": {"dict": {}, "list": [], "nested": [[], {}]},
    "records": [{"a": [1, [2, {"b": None}]]}, [3, 4], ("tuple", 5), 6],
    "tuple": (1, 2),
    "deep": {"x": {"y": {"z": [{"k": "v"}]}}},
}


def test_encoding_parses_to_the_document_json_dumps_writes() -> None:
    """Every kind of value a manifest may hold (non-text keys, NaN, lone surrogates, tuples, empty
    containers, lists of mixed records) reads back as what `json.dumps` with `indent` wrote."""
    expected = json.dumps(AWKWARD, indent=1, ensure_ascii=False).encode("utf-8", "backslashreplace")
    written = manifest_mod.dumps(AWKWARD)
    assert repr(json.loads(written)) == repr(json.loads(expected))  # repr: NaN != NaN
    assert written.count(b"\n") > len(AWKWARD), "indented, not one line"


def test_a_key_json_cannot_write_still_fails() -> None:
    with pytest.raises(TypeError):
        manifest_mod.dumps({"a": {(1, 2): 3}})


BAD_VALUES = (None, True, 0, -1, 1.5, "", "x", [], [1], {}, {"extra": 1})


def _mutations(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) for every place of `doc`: each bad value put there, each key removed (value
    `KeyError`), and an unknown key added to each object."""
    node = doc
    for part in path:
        node = node[part]
    if isinstance(node, dict):
        yield (*path, "unknown_key"), 1
        for key in list(node)[:12]:
            yield (*path, key), KeyError
            yield from _mutations(doc, (*path, key))
    elif isinstance(node, list):
        for i in range(min(len(node), 2)):
            yield from _mutations(doc, (*path, i))
    if path:
        for value in BAD_VALUES:
            yield path, value


def _mutated(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def _layout_doc() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((REPO / "convert" / "layouts" / "burn.toml").read_text())


@pytest.mark.parametrize("schema", ["manifest.schema.json", "layout.schema.json"])
def test_compiled_validator_agrees_with_jsonschema_on_every_mutation(converted: Path, schema: str) -> None:
    """A real manifest (and a shipped layout file) with each of its places broken in each way: the
    compiled check and jsonschema give the same verdict, so the fast path lets through nothing
    jsonschema would refuse."""
    doc = read_manifest(converted) if schema.startswith("manifest") else _layout_doc()
    fast = compiled(schema)
    reference = jsonschema.Draft202012Validator(json.loads(schema_text(schema)))
    assert fast(doc) and reference.is_valid(doc)
    checked = 0
    for path, value in _mutations(doc):
        case = _mutated(doc, path, value)
        checked += 1
        assert fast(case) == reference.is_valid(case), f"{'/'.join(map(str, path))} = {value!r}"
    assert checked > 300


def test_a_document_the_compiled_check_cannot_take_goes_to_jsonschema() -> None:
    """A key that is not text (jsonschema-rs raises on it): jsonschema judges, with its own message."""
    assert not compiled("manifest.schema.json")({1: 2})
    with pytest.raises(VerificationError, match="manifest does not match manifest.schema.json at"):
        manifest_mod.validate({1: 2})


def test_a_bad_manifest_names_its_problem_as_jsonschema_does(converted: Path, tmp_path: Path) -> None:
    """The compiled check rejects; jsonschema still writes the one-line error (exit 8, verify's code)."""
    out = tmp_path / "out"
    out.mkdir()
    for f in converted.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    doc = read_manifest(out)
    doc["tensors"][0]["shape"] = [-1]
    (out / "manifest.json").write_bytes(manifest_mod.dumps(doc))
    rc, _, stderr = run_cli("verify", out)
    assert rc == 8, stderr
    assert "manifest does not match manifest.schema.json at tensors/0/shape/0: -1 is less than the minimum of 0" in stderr

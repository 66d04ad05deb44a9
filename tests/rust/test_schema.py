"""The Rust manifest types and schemas/manifest.schema.json cannot drift.

Both directions: the fields the Rust types read (their serde skeleton, printed by the crate) must
be the schema's fields, and a manifest filling every schema field must come back unchanged through
the Rust types. The only difference allowed is the digest naming the crate reads in both forms
(`sha256` fields of version 1.0, `digest` fields and `digest_algorithm` of 2.0).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import convert_ok, flip_tensor_byte, header_length, run_cli
from convert import manifest as manifest_mod
from tests.support.rust import SCHEMA, resolve, run, rust_tools, schema_skeleton, types

DIGEST_NAMES = {"digest", "sha256"}


def paths(skeleton: Any, prefix: str = "") -> set[str]:
    found = {prefix} if prefix else set()
    if isinstance(skeleton, dict):
        for k, v in skeleton.items():
            found |= paths(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(skeleton, list):
        found |= paths(skeleton[0], f"{prefix}[]")
    return found


def is_digest_naming(path: str) -> bool:
    return path == "digest_algorithm" or path.rsplit(".", 1)[-1] in DIGEST_NAMES


def example(node: dict[str, Any], key: str = "") -> Any:
    """A value for a schema node filling every field it declares (nullable fields non-null)."""
    node = resolve(node)
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return node["enum"][-1]
    kinds = [t for t in types(node) if t != "null"] or ["object"]
    kind = kinds[0]
    if kind == "object":
        if "properties" in node:
            return {k: example(v, k) for k, v in node["properties"].items()}
        extra = node.get("additionalProperties")
        return {f"{key}-key": example(extra, key)} if isinstance(extra, dict) else {f"{key}-key": f"{key}-value"}
    if kind == "array":
        return [example(node["items"], key) for _ in range(max(1, node.get("minItems", 1)))] if "items" in node else []
    if kind == "string":
        return "ab" * 32 if "pattern" in node else f"{key}-text"
    return {"integer": 3, "number": 0.5, "boolean": True}[kind]


def roundtrip(tmp_path: Path, doc: dict[str, Any]) -> tuple[int, dict[str, Any] | None, str]:
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    dst.unlink(missing_ok=True)
    src.write_text(json.dumps(doc))
    rc, _stdout, stderr = run(rust_tools().schema, "roundtrip", src, dst)
    return rc, (json.loads(dst.read_text()) if rc == 0 else None), stderr


def test_rust_types_read_exactly_the_schema_fields() -> None:
    rc, stdout, stderr = run(rust_tools().schema, "fields")
    assert rc == 0, stderr
    rust, schema = paths(json.loads(stdout)), paths(schema_skeleton(SCHEMA))
    assert not schema - rust, f"schema fields the Rust types do not read: {sorted(schema - rust)}"
    rust_only = {p for p in rust - schema if not is_digest_naming(p)}
    assert not rust_only, f"Rust fields the schema does not have: {sorted(rust_only)}"


def test_every_schema_field_round_trips_through_the_rust_types(tmp_path: Path) -> None:
    doc = example(SCHEMA)
    manifest_mod.validate(doc)  # the example is a valid manifest...
    assert paths(schema_skeleton(SCHEMA)) <= paths_of_value(doc)  # ...that fills every field
    rc, back, stderr = roundtrip(tmp_path, doc)
    assert rc == 0, stderr
    assert back == doc


def paths_of_value(value: Any, prefix: str = "") -> set[str]:
    """Paths of a JSON value, arrays as [] (a free-form object's keys count too: harmless extras)."""
    found = {prefix} if prefix else set()
    if isinstance(value, dict):
        for k, v in value.items():
            found |= paths_of_value(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(value, list) and value:
        for v in value:
            found |= paths_of_value(v, f"{prefix}[]")
    return found


def test_a_field_unknown_to_the_types_is_tolerated_and_dropped(tmp_path: Path) -> None:
    """Tolerance of later fields, and the proof that the round trip above can fail."""
    doc = example(SCHEMA)
    doc["added_later"] = {"x": 1}
    doc["tensors"][0]["added_later"] = True
    rc, back, stderr = roundtrip(tmp_path, doc)
    assert rc == 0, stderr
    assert back is not None and back != doc and "added_later" not in back and "added_later" not in back["tensors"][0]


@pytest.mark.parametrize("version", ["3.0", "1", "0.9", None, 1.0])
def test_unknown_versions_are_refused(tmp_path: Path, version: Any) -> None:
    doc = example(SCHEMA)
    if version is None:
        del doc["manifest_version"]
    else:
        doc["manifest_version"] = version
    rc, back, stderr = roundtrip(tmp_path, doc)
    assert rc == 8 and back is None and "manifest_version" in stderr, stderr


def test_both_versions_load(tmp_path: Path) -> None:
    for version in ("1.0", "2.0"):
        doc = example(SCHEMA)
        doc["manifest_version"] = version
        rc, back, stderr = roundtrip(tmp_path, doc)
        assert rc == 0 and back == doc, (version, stderr)


def test_a_missing_required_field_is_refused(tmp_path: Path) -> None:
    doc = example(SCHEMA)
    del doc["tensors"][0]["data_offsets"]
    rc, _back, stderr = roundtrip(tmp_path, doc)
    assert rc == 8 and "data_offsets" in stderr, stderr


# ---------------------------------------------------------------------------------------------
# Real outputs, and the 2.0 digest form
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("rust-schema")
    torch.manual_seed(2)
    m = torch.nn.ModuleDict({"emb": torch.nn.Embedding(9, 4), "lstm": torch.nn.LSTM(4, 3), "out": torch.nn.Linear(3, 9)})
    torch.save(m.state_dict(), root / "m.pt")
    convert_ok("pth-to-safetensors", root / "m.pt", root / "out", "--layout", "burn", "--max-shard-size", "1KB")
    return root / "out"


def test_a_real_manifest_round_trips(converted: Path, tmp_path: Path) -> None:
    doc = json.loads((converted / "manifest.json").read_text())
    rc, back, stderr = roundtrip(tmp_path, doc)
    assert rc == 0 and back == doc, stderr


def as_version_2(out: Path, algorithm: str) -> None:
    """Rewrite an output's manifest in the 2.0 form: `digest` fields under `digest_algorithm`
    (from either form, so the test holds whichever form the converter writes)."""
    import hashlib

    import blake3

    def digest(data: bytes) -> str:
        return blake3.blake3(data).hexdigest() if algorithm == "blake3" else hashlib.sha256(data).hexdigest()

    doc = json.loads((out / "manifest.json").read_text())
    doc["manifest_version"], doc["digest_algorithm"] = "2.0", algorithm
    contents = {}
    for f in doc["files"]:
        contents[f["path"]] = (out / f["path"]).read_bytes()
        f.pop("sha256", None)
        f["digest"] = digest(contents[f["path"]])
    for f in doc["source"]["files"]:
        f["digest"] = f.pop("sha256", None) or f["digest"]
    for t in doc["tensors"]:
        start = header_length(out / t["file"])
        t.pop("sha256", None)
        t["digest"] = digest(contents[t["file"]][start + t["data_offsets"][0] : start + t["data_offsets"][1]])
    (out / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_version_2_digests_are_verified(converted: Path, tmp_path: Path, algorithm: str) -> None:
    import shutil

    out = tmp_path / "v2"
    shutil.copytree(converted, out)
    as_version_2(out, algorithm)
    rc, stdout, stderr = run(rust_tools().rmc, "verify", out)
    assert rc == 0, stdout + stderr
    doc = json.loads((out / "manifest.json").read_text())
    victim = doc["tensors"][-1]
    flip_tensor_byte(out, victim["name"], 0x80)
    rc, stdout, stderr = run(rust_tools().rmc, "verify", out, "--json")
    assert rc == 8, stderr
    problems = json.loads(stdout)["problems"]
    assert f'tensor "{victim["name"]}": bytes do not match the manifest\'s {algorithm}' in problems, problems


def test_an_unknown_digest_algorithm_is_refused(converted: Path, tmp_path: Path) -> None:
    doc = copy.deepcopy(json.loads((converted / "manifest.json").read_text()))
    doc["manifest_version"], doc["digest_algorithm"] = "2.0", "md5"
    rc, _back, stderr = roundtrip(tmp_path, doc)
    assert rc == 8 and "md5" in stderr, stderr

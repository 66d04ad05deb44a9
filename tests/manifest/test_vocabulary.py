"""Each closed vocabulary has one source of truth in Python; the JSON schemas' enums and the CLI's
choices must say exactly the same, so neither can drift from the code that reads them."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest

from convert.cli import cli
from convert.dtypes import DTYPES
from convert.hashing import ALGORITHMS
from convert.outputs.gguf.ggml_types import TYPES as GGML_TYPES
from convert.vocabulary import CAST_LOSS, CAST_TARGETS, TIE_MODES, TRANSFORM_OPS
from exporters.shared.options import QUANTIZED_MODES
from tests.support import REPO


def schema(name: str) -> dict[str, Any]:
    return json.loads((REPO / "schemas" / name).read_text())


def at(doc: dict[str, Any], path: str) -> list[Any]:
    node: Any = doc
    for part in path.split("/"):
        node = node[part]
    return node["enum"]


@pytest.mark.parametrize(
    "schema_name, path, truth",
    [
        ("manifest.schema.json", "$defs/dtype", set(DTYPES) | {t.ggml_name for t in GGML_TYPES.values() if t.quantized}),
        ("layout.schema.json", "$defs/dtype", set(DTYPES)),
        ("manifest.schema.json", "$defs/transform/properties/op", set(TRANSFORM_OPS)),
        ("layout.schema.json", "$defs/transform/properties/op", set(TRANSFORM_OPS)),
        ("manifest.schema.json", "properties/digest_algorithm", set(ALGORITHMS)),
        ("batch.schema.json", "$defs/options/properties/digest", set(ALGORITHMS)),
        ("batch.schema.json", "$defs/options/properties/dtype", set(CAST_TARGETS)),
        ("batch.schema.json", "$defs/options/properties/cast_loss", set(CAST_LOSS)),
        ("batch.schema.json", "$defs/options/properties/quantized", set(QUANTIZED_MODES)),
        ("layout.schema.json", "properties/ties", set(TIE_MODES)),
        ("manifest.schema.json", "properties/target/properties/ties/properties/loader", set(TIE_MODES)),
        ("manifest.schema.json", "properties/target/properties/ties/properties/written", set(TIE_MODES)),
    ],
)
def test_schema_enums_match_the_code(schema_name: str, path: str, truth: set[str]) -> None:
    assert set(at(schema(schema_name), path)) == truth


def choices(command: str, option: str) -> set[str]:
    params = {p.name: p for p in cli.commands[command].params}
    kind = params[option].type
    assert isinstance(kind, click.Choice)
    return set(kind.choices)


@pytest.mark.parametrize("command", sorted(c for c in cli.commands if c.endswith("-to-safetensors") or c in ("auto", "batch")))
def test_cli_choices_match_the_code(command: str) -> None:
    assert choices(command, "dtype") == set(CAST_TARGETS)
    assert choices(command, "cast_loss") == set(CAST_LOSS)
    assert choices(command, "digest") == set(ALGORITHMS)


def test_every_transform_op_is_known_to_the_transforms_module() -> None:
    """An op outside the vocabulary is refused by the one place that runs chains."""
    from convert.errors import MappingError
    from convert.transforms import output_spec

    with pytest.raises(MappingError, match="unknown transform"):
        output_spec([{"op": "rotate"}], [((2, 2), DTYPES["F32"])])

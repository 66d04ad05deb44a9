"""User-written documents (layout rule files, batch job files, manifests): reading TOML and checking
a document against its JSON Schema, with one clear error naming the first problem."""

from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConvertError, SourceNotFoundError, UsageError


def schema_text(name: str) -> str:
    """A schema shipped with the package (schemas/ in the source tree)."""
    return resources.files("convert").joinpath("schemas", name).read_text(encoding="utf-8")


def check_schema(doc: Any, schema_name: str, where: str, error: type[ConvertError]) -> None:
    """`doc` against a shipped schema. A compiled validator answers first where the schema allows it
    (a manifest of 20,000 tensors: 0.4 s against jsonschema's 7); only a document it rejects goes to
    jsonschema, which stays the judge and writes the message, so errors read as they always did."""
    fast = compiled(schema_name)
    if fast is not None and fast(doc):
        return
    import jsonschema  # imported here: conversions with built-in settings never need it

    validator = jsonschema.Draft202012Validator(json.loads(schema_text(schema_name)))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        path = "/".join(map(str, errors[0].path)) or "(root)"
        raise error(f"{where} does not match {schema_name} at {path}: {errors[0].message}")


# The keywords fastjsonschema reads exactly as jsonschema's Draft 2020-12 does, with `enum` and `const`
# of strings only (fastjsonschema's `in` takes True for 1). A schema using anything else (oneOf,
# allOf, ...) is checked by jsonschema alone: a keyword one validator ignored would let a document
# through that the other refuses.
_COMPILABLE = frozenset(
    {"$schema", "$id", "$defs", "$ref", "title", "description", "type", "properties", "required"}
    | {"additionalProperties", "items", "minItems", "maxItems", "minimum", "pattern", "enum", "const"}
)


def compilable(schema: Any) -> bool:
    """Whether every keyword of `schema` is one both validators read alike (_COMPILABLE)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not set(schema) <= _COMPILABLE:
        return False
    values = schema.get("enum", []) + ([schema["const"]] if "const" in schema else [])
    items = schema.get("items", True)
    extra = schema.get("additionalProperties", True)
    subschemas = [*schema.get("properties", {}).values(), *schema.get("$defs", {}).values(), items, extra]
    return all(type(v) is str for v in values) and all(compilable(s) for s in subschemas)


@functools.cache
def compiled(schema_name: str) -> Callable[[Any], bool] | None:
    """A yes/no check of a document against the schema, compiled once per process; None when the
    schema is not `compilable`."""
    schema = json.loads(schema_text(schema_name))
    if not compilable(schema):
        return None
    import fastjsonschema  # compiles the schema to Python code: 0.1 s, paid only by verify

    check = fastjsonschema.compile(schema, use_default=False)

    def valid(doc: Any) -> bool:
        try:
            check(doc)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return valid


# Nesting any document may have: real configs (Keras models in models, NeuralForecast configs)
# stay under 40; the code that walks them recurses, so deeper ones fail cleanly here instead.
MAX_NESTING = 200
# Every parse error the standard parsers raise: ValueError covers JSONDecodeError, TOMLDecodeError
# and integers past Python's 4300-digit conversion limit; RecursionError is `[[[[...`.
PARSE_ERRORS = (ValueError, RecursionError, UnicodeDecodeError)


def parse_json(text: str | bytes, where: str, error: type[ConvertError]) -> Any:
    """JSON from a file a user or an attacker wrote: every parse error, and nesting past
    MAX_NESTING, is `error` naming `where`; never a ValueError or RecursionError further on."""
    try:
        doc = json.loads(text)
    except PARSE_ERRORS as exc:
        raise error(f"{where}: not valid JSON ({str(exc)[:200]})") from None
    return _shallow(doc, where, error)


def parse_toml(text: str, where: str, error: type[ConvertError]) -> dict[str, Any]:
    """TOML, with the same limits as parse_json."""
    try:
        doc = tomllib.loads(text)
    except PARSE_ERRORS as exc:
        raise error(f"{where}: not valid TOML ({str(exc)[:200]})") from None
    return _shallow(doc, where, error)


def _shallow(doc: Any, where: str, error: type[ConvertError]) -> Any:
    """`doc`, after an iterative walk has found no nesting past MAX_NESTING."""
    pending = [(doc, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_NESTING:
            raise error(f"{where}: nested more than {MAX_NESTING} deep")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return doc


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceNotFoundError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {p} is a folder") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {p}: not valid TOML ({exc})") from None
    return parse_toml(text, f"{what} {p}", UsageError)

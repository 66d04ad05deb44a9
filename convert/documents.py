"""User-written documents (layout rule files, batch job files, manifests): reading TOML and checking
a document against its JSON Schema, with one clear error naming the first problem."""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConvertError, SourceNotFoundError, UsageError

T = TypeVar("T")


def schema_text(name: str) -> str:
    """A schema shipped with the package (schemas/ in the source tree)."""
    return resources.files("convert").joinpath("schemas", name).read_text(encoding="utf-8")


def check_schema(doc: Any, schema_name: str, where: str, error: type[ConvertError]) -> None:
    """`doc` against a shipped schema. A compiled validator answers first (a manifest of 20,000
    tensors: 0.02 s, against 7 s for jsonschema); only a document it rejects goes to jsonschema,
    which stays the judge and writes the message, so errors read as they always did."""
    if compiled(schema_name)(doc):
        return
    import jsonschema  # imported here: conversions with built-in settings never need it

    validator = jsonschema.Draft202012Validator(json.loads(schema_text(schema_name)))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        path = "/".join(map(str, errors[0].path)) or "(root)"
        raise error(f"{where} does not match {schema_name} at {path}: {errors[0].message}")


@functools.cache
def compiled(schema_name: str) -> Callable[[Any], bool]:
    """A yes/no check of a document against a shipped schema by jsonschema-rs (Rust, Draft 2020-12),
    built once per process. Anything it cannot take (a dict key that is not text) is a no, for
    jsonschema to judge."""
    import jsonschema_rs

    check = jsonschema_rs.validator_for(json.loads(schema_text(schema_name)))

    def valid(doc: Any) -> bool:
        try:
            return bool(check.is_valid(doc))
        except (ValueError, TypeError, OverflowError, RecursionError):
            return False

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
    if not _json_within_nesting(text.decode(json.detect_encoding(text), "surrogatepass") if isinstance(text, bytes) else text):
        raise error(f"{where}: nested more than {MAX_NESTING} deep")
    return doc


def parse_toml(text: str, where: str, error: type[ConvertError]) -> dict[str, Any]:
    """TOML, with the same limits as parse_json."""
    try:
        doc = tomllib.loads(text)
    except PARSE_ERRORS as exc:
        raise error(f"{where}: not valid TOML ({str(exc)[:200]})") from None
    return _shallow(doc, where, error)


# Every ASCII character but a quote or a bracket, for str.translate to drop (in C; anything else is
# inside a string, which goes next).
_NOT_QUOTE_OR_BRACKET = {c: None for c in range(128) if chr(c) not in '"[]{}'}
_STRING = re.compile(r'"[^"]*"')
_EMPTY_CONTAINER = re.compile(r"\[\]|\{\}")


def _json_within_nesting(text: str) -> bool:
    """Whether JSON text (already parsed) nests no deeper than MAX_NESTING, read from its brackets:
    escaped backslashes and quotes dropped, then everything but quotes and brackets, then each string
    with the brackets it holds, and then the innermost empty pairs removed once per level. The same
    count as walking the parsed document, by C string operations instead of a Python step per value."""
    bare = text.replace("\\\\", "").replace('\\"', "").translate(_NOT_QUOTE_OR_BRACKET)
    brackets = _STRING.sub("", bare)
    for _ in range(MAX_NESTING):
        if not brackets:
            return True
        brackets = _EMPTY_CONTAINER.sub("", brackets)
    return not brackets


def _shallow(doc: T, where: str, error: type[ConvertError]) -> T:
    """`doc`, after an iterative walk has found no nesting past MAX_NESTING."""
    pending: list[tuple[Any, int]] = [(doc, 1)]
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

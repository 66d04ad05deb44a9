"""User-written documents (layout rule files, batch job files, manifests): reading TOML and checking
a document against its JSON Schema, with one clear error naming the first problem."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConvertError, SourceNotFoundError, UsageError


def schema_text(name: str) -> str:
    """A schema shipped with the package (schemas/ in the source tree)."""
    return resources.files("convert").joinpath("schemas", name).read_text(encoding="utf-8")


def check_schema(doc: Any, schema_name: str, where: str, error: type[ConvertError]) -> None:
    import jsonschema  # imported here: conversions with built-in settings never need it

    validator = jsonschema.Draft202012Validator(json.loads(schema_text(schema_name)))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        path = "/".join(map(str, errors[0].path)) or "(root)"
        raise error(f"{where} does not match {schema_name} at {path}: {errors[0].message}")


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceNotFoundError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {p} is a folder") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[...
        raise UsageError(f"{what} {p}: not valid TOML ({exc})") from None

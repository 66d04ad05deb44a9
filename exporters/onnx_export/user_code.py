"""`--module pkg.mod:factory`: the one place the export imports and calls code, the user's own, named
explicitly on the command line (never anything a model file names)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from convert.errors import UsageError


def call_factory(spec: str) -> Any:
    """Import `pkg.mod` (from the working folder too, as `python -m` would) and call `factory()`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--module {spec!r}: expected pkg.module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--module {spec}: cannot find it ({exc})") from None
    if not callable(target):
        raise UsageError(f"--module {spec}: {attr} is not callable")
    try:
        return target()
    except Exception as exc:  # the user's code failed; say so rather than call it our bug
        raise UsageError(f"--module {spec}: calling {attr}() raised {type(exc).__name__}: {exc}") from None


def required_arguments(fn: Callable[..., Any], owner: str) -> list[str]:
    """The names of a forward function's required arguments: the graph's inputs."""
    names = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(f"{owner} takes *{param.name}; name its inputs explicitly")
        if param.default is param.empty:
            names.append(param.name)
    if not names:
        raise UsageError(f"{owner} takes no inputs")
    return names

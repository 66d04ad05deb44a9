"""The import contracts in pyproject.toml (run by `lint-imports`) hold without exceptions, and they
name every module they are about: a new core module, reader or output must take its place in them,
or it would sit outside the layers unchecked."""

from __future__ import annotations

import tomllib

from exporters.registry import READERS
from tests.support import REPO

CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
CROSS = next(c for c in CONFIG["contracts"] if c["type"] == "layers" and not c.get("containers"))
FACES = ("convert.cli", "convert.batch", "convert.api")


def _modules(layer: str) -> set[str]:
    return {m.strip() for part in layer.split("|") for m in part.split(":")}


def test_no_contract_has_exceptions() -> None:
    assert not [c["name"] for c in CONFIG["contracts"] if c.get("ignore_imports")]


def test_the_faces_stand_on_top_and_the_core_at_the_bottom() -> None:
    assert tuple(CROSS["layers"][: len(FACES)]) == FACES
    core = {f"convert.{p.stem}" for p in (REPO / "convert").glob("*.py")} - {"convert.__init__", *FACES}
    assert _modules(CROSS["layers"][-1]) == core


def test_every_reader_and_output_has_its_layer() -> None:
    """Each reader package is a layer or an independent sibling of one; outputs are one package."""
    listed = set().union(*(_modules(layer) for layer in CROSS["layers"]))
    packages = {f"exporters.{p.name}" for p in (REPO / "exporters").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= listed
    assert {f.open.__module__ for f in READERS} <= listed
    assert "convert.outputs" in listed

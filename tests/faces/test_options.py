"""Every option is declared once (convert.options.CONVERSION_OPTIONS, convert.contract.ReaderOptions,
each output's `options`): the CLI's flags are built from those records, and the batch job file, its
JSON Schema, ConvertOptions and the Python API are checked against them here, so one that drifts fails."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest

from convert import batch
from convert.api import conversion_options
from convert.cli import cli
from convert.contract import READER_OPTIONS, ReaderOptions
from convert.options import CONVERSION_OPTIONS, OPTIONS, ConvertOptions
from convert.outputs.registry import OWN_OPTIONS, all_outputs
from exporters.registry import READERS
from tests.support import REPO

SCHEMA = json.loads((REPO / "schemas" / "batch.schema.json").read_text())
CONVERSION_COMMANDS = sorted(name for name, c in cli.commands.items() if any(p.name == "cast_loss" for p in c.params))


def _default(field: dataclasses.Field) -> object:  # type: ignore[type-arg]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def test_the_conversion_commands_are_found() -> None:
    assert {"auto", "batch", "pth-to-safetensors", "tflite-to-safetensors"} <= set(CONVERSION_COMMANDS)


@pytest.mark.parametrize("command", CONVERSION_COMMANDS)
def test_each_conversion_flag_is_its_record(command: str) -> None:
    params = {p.name: p for p in cli.commands[command].params}
    for option in CONVERSION_OPTIONS:
        param = params[option.name]
        assert isinstance(param, click.Option) and param.opts == [option.flag], option.name
        assert param.help == option.help, option.name
        assert param.to_info_dict()["default"] == (False if option.type is bool else option.default), option.name
        choices = getattr(param.type, "choices", None)
        assert tuple(choices or ()) == option.choices, option.name


def test_convert_options_and_the_api_take_every_option_with_its_default() -> None:
    fields = {f.name: _default(f) for f in dataclasses.fields(ConvertOptions)}
    for option in CONVERSION_OPTIONS:
        assert option.name in fields, option.name
        assert fields[option.name] == (option.default if option.type is not dict else {}), option.name
    conversion_options({o.name: {} if o.type is dict else o.default for o in CONVERSION_OPTIONS})  # the API's keywords


def test_the_job_file_takes_every_option_with_its_default() -> None:
    fields = {f.name: _default(f) for f in dataclasses.fields(batch.Job)}
    for option in CONVERSION_OPTIONS:
        assert option.name in fields, option.name
        assert fields[option.name] == (option.default if option.type is not dict else {}), option.name
    assert _default(next(f for f in dataclasses.fields(batch.Job) if f.name == "reader")) == ReaderOptions()


def test_the_batch_schema_lists_every_option_and_its_allowed_values() -> None:
    """Conversion and reader options alike, in `defaults` and in each `[[job]]`, with the records' choices."""
    declared = SCHEMA["$defs"]["options"]["properties"]
    names = [o.name for o in CONVERSION_OPTIONS] + list(ReaderOptions.names())
    for where in (SCHEMA["properties"]["defaults"]["properties"], SCHEMA["properties"]["job"]["items"]["properties"]):
        assert set(names) <= set(where)
    choices = {o.name: o.choices for o in (*CONVERSION_OPTIONS, *READER_OPTIONS)}
    for name in names:
        assert tuple(declared[name].get("enum", ())) == tuple(choices.get(name, ())), name


def test_output_options_are_declared_once() -> None:
    """An output's option is a conversion option's own record (SafeTensors' max_shard_size), a layout
    option the layouts that write it declare (a companion's), or a name of its own that no conversion
    option takes (its value then comes in ConvertOptions.output_options)."""
    from convert.mapping import load_layout

    layout_options = set(load_layout("neuro-divergent").options)
    for output in all_outputs():
        for option in output.options:
            if output.role == "companion":
                assert option.name in layout_options, (output.name, option.name)
            elif option.name in OPTIONS:
                assert option is OPTIONS[option.name], (output.name, option.name)


def test_own_options_are_what_each_tensor_output_declares() -> None:
    """The CLI builds its flags from OWN_OPTIONS without loading the outputs: it must be, record for
    record, what each tensor output declares beyond the conversion options."""
    tensor_outputs = {o.name: o for o in all_outputs() if o.role == "tensors"}
    assert set(OWN_OPTIONS) == set(tensor_outputs)
    for name, output in tensor_outputs.items():
        assert OWN_OPTIONS[name] == tuple(o for o in output.options if o.name not in OPTIONS), name


def test_reader_options_are_their_records() -> None:
    """ReaderOptions' fields and defaults are READER_OPTIONS'; each reader command's flag is built from
    the record (its help the reader's own wording where it has one)."""
    fields = {f.name: _default(f) for f in dataclasses.fields(ReaderOptions)}
    assert fields == {o.name: o.default for o in READER_OPTIONS}
    records = {o.name: o for o in READER_OPTIONS}
    for face in (f for f in READERS if f.command):
        params = {p.name: p for p in cli.commands[face.command].params}
        for name in face.options:
            option, param = records[name], params[name]
            assert isinstance(param, click.Option) and param.opts == [option.flag], (face.command, name)
            assert param.help == face.option_help.get(name, option.help), (face.command, name)
            assert tuple(getattr(param.type, "choices", ()) or ()) == option.choices, (face.command, name)

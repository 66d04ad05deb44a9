"""Every option is declared once (convert.options.CONVERSION_OPTIONS, each reader's and each output's
`options`): the CLI's flags are built from those records, and the batch job file, its
JSON Schema, ConvertOptions and the Python API are checked against them here, so one that drifts fails."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest

from convert import api, batch
from convert.api import conversion_options
from convert.cli import cli
from convert.contract import ReaderOptions
from convert.options import CONVERSION_OPTIONS, OPTIONS, ConvertOptions
from convert.outputs.registry import OWN_OPTIONS, all_outputs
from exporters.registry import READER_OPTIONS, READERS
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
    names = [o.name for o in (*CONVERSION_OPTIONS, *READER_OPTIONS)]
    for where in (SCHEMA["properties"]["defaults"]["properties"], SCHEMA["properties"]["job"]["items"]["properties"]):
        assert set(names) <= set(where)
    choices = {o.name: o.choices for o in (*CONVERSION_OPTIONS, *READER_OPTIONS)}
    for name in names:
        assert tuple(declared[name].get("enum", ())) == tuple(choices.get(name, ())), name


def test_the_batch_takes_each_outputs_own_options() -> None:
    """batch's --to names every tensor output; each output's own options are batch flags and job-file
    keys (in `defaults`, in each `[[job]]`, with the record's allowed values)."""
    params = {p.name: p for p in cli.commands["batch"].params}
    assert tuple(params["to"].type.choices) == tuple(OWN_OPTIONS)  # type: ignore[attr-defined]
    assert SCHEMA["$defs"]["options"]["properties"]["to"]["enum"] == list(OWN_OPTIONS)
    declared = SCHEMA["$defs"]["options"]["properties"]
    for option in (o for own in OWN_OPTIONS.values() for o in own):
        assert isinstance(params[option.name], click.Option) and params[option.name].opts == [option.flag], option.name
        assert option.name in batch.output_option_names(), option.name
        for where in (SCHEMA["properties"]["defaults"]["properties"], SCHEMA["properties"]["job"]["items"]["properties"]):
            assert option.name in where, option.name
        assert tuple(declared[option.name].get("enum", ())) == option.choices, option.name


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


def test_reader_options_are_what_the_readers_declare() -> None:
    """The registry's READER_OPTIONS is each reader's own records, each once (a name two readers take
    is one record, in exporters/shared/options.py); each reader command's flag is built from its
    reader's record (its help the reader's own wording where it has one)."""
    declared = {o.name: o for face in READERS for o in face.options}
    assert len(READER_OPTIONS) == len({o.name for o in READER_OPTIONS}) == len(declared)
    for option in READER_OPTIONS:
        assert declared[option.name] is option, option.name
    for face in (f for f in READERS if f.command):
        params = {p.name: p for p in cli.commands[face.command].params}
        for option in face.options:
            param = params[option.name]
            assert isinstance(param, click.Option) and param.opts == [option.flag], (face.command, option.name)
            assert param.help == face.option_help.get(option.name, option.help), (face.command, option.name)
            assert tuple(getattr(param.type, "choices", ()) or ()) == option.choices, (face.command, option.name)
            assert param.multiple == (option.type is tuple), (face.command, option.name)


def test_each_reader_function_of_the_api_takes_its_readers_options() -> None:
    """`api.<command>` (pth_to_safetensors, ...) takes exactly its reader's options as keywords, with
    the records' defaults."""
    import inspect

    for face in (f for f in READERS if f.command):
        function = getattr(api, face.command.replace("-", "_"))
        params = inspect.signature(function).parameters
        keywords = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "progress"}
        assert keywords == {o.name: o.default for o in face.options}, face.command


def test_reader_options_read_their_values() -> None:
    """A value outside a record's choices or a size that is none is a usage error before anything is
    opened; a name no reader takes too; lists become tuples and sizes bytes."""
    from convert.errors import UsageError

    with pytest.raises(UsageError, match="quantized must be one of dequantize, keep"):
        ReaderOptions(quantized="halve").checked(READER_OPTIONS)
    with pytest.raises(UsageError, match="cannot read size"):
        ReaderOptions(max_inflated_size="lots").checked(READER_OPTIONS)
    with pytest.raises(UsageError, match="no reader takes the option 'colour'"):
        ReaderOptions(colour="red").checked(READER_OPTIONS)
    read = ReaderOptions(collections=["params", "cache"], max_inflated_size="2KiB").checked(READER_OPTIONS)
    assert read.given() == {"collections": ("params", "cache"), "max_inflated_size": 2048}
    assert ReaderOptions().to_json(READER_OPTIONS) == {
        o.name: list(o.default) if o.type is tuple else o.default for o in READER_OPTIONS
    }

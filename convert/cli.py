"""`convert`: the command-line shell over convert.api. Each command parses options, calls the API,
and prints; errors a user can cause are one line on stderr and a documented exit code."""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import __version__
from .errors import EXIT_CODES, EXIT_INTERRUPTED, ConvertError, missing_extra, one_line
from .options import CONVERSION_OPTIONS, OPTIONS, Option
from .vocabulary import CAST_TARGETS, QUANTIZE_MODES, canonical_dtype

EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in sorted(EXIT_CODES.items()))


def example(*lines: str) -> str:
    """A help page's epilog: typical invocations, kept as written."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the same clean-up as Ctrl-C runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _fail(message: str, code: int, kind: str = "error", details: dict[str, Any] | None = None) -> None:
    """The error line on stderr and the exit code; with --json, also one JSON object on stdout
    (`details`, such as verify's report, merged into it)."""
    line = one_line(message)
    click.echo(f"convert: error: {line}", err=True)
    if _wants_json():
        click.echo(json.dumps({**(details or {}), "error": line, "exit_code": code, "kind": kind}))
    sys.exit(code)


def command_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the toolchain's errors into one line and an exit code; tracebacks only with -v."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = _flags().get("verbose", 0)
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except ConvertError as exc:
            if verbose:
                traceback.print_exc()
            _fail(str(exc), exc.exit_code, exc.kind, exc.details)
        except BrokenPipeError:  # `convert inspect ... | head`: the reader left, which is fine
            sys.stdout = open(os.devnull, "w")
            sys.exit(0)
        except (KeyboardInterrupt, Terminated):
            _fail("interrupted; nothing was left half-written", EXIT_INTERRUPTED, "interrupted")
        except Exception as exc:  # an optional extra not installed (exit 4), else a bug: say so plainly
            missing = (
                missing_extra(exc.name or "", click.get_current_context().info_name or "this")
                if isinstance(exc, ModuleNotFoundError)
                else None
            )
            if verbose:
                traceback.print_exc()
            if missing is not None:
                _fail(str(missing), missing.exit_code, missing.kind)
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", 1, "internal")

    return wrapper


def _flags() -> dict[str, Any]:
    """-q/-v/--json as given before or after the subcommand name."""
    flags: dict[str, Any] = click.get_current_context().find_root().meta.setdefault("convert.flags", {})
    return flags


def _wants_json() -> bool:
    """--json, before or after the subcommand; also when click refused the command line before any
    option was read (then the words given say it)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get("convert.flags", {}).get("json"):
        return True
    args = sys.argv[1:]
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        ctx.find_root().meta.setdefault("convert.flags", {})[param.name] = value


def output_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-q, -v and --json: taken by the group and by every command, so either place works."""
    fn = click.option(
        "--json",
        "json",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="Machine-readable result on stdout; an error is one JSON object {error, exit_code, kind} there too.",
    )(fn)
    fn = click.option("-v", "--verbose", count=True, expose_value=False, callback=_remember, help="Print tracebacks for errors.")(
        fn
    )
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_remember, help="Print nothing but errors.")(
        fn
    )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=example("convert pth-to-safetensors model.pt out/ --layout candle", "convert -q --json verify out/ --source model.pt")
    + "\n\n"
    + EXIT_HELP,
)
@click.version_option(__version__, prog_name="convert")
@output_flags
def cli() -> None:
    """Convert trained models into SafeTensors (or quantized GGUF) plus a JSON manifest that Rust ML
    frameworks (candle, burn, tch-rs, ToRSh, TrustformeRS, realizar, ...) load, and prove each conversion."""


class DtypeChoice(click.Choice[str]):
    """--dtype's choices are the canonical names; the other spellings (fp16, half, ...) are read as them."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(canonical_dtype(value) if isinstance(value, str) else value, param, ctx)


def declared(option: Option, **click_kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option for a declared Option: its flag, help, default and choices from the record;
    `click_kwargs` only for what is the CLI's own (a metavar, a path type, a repeated flag)."""
    kwargs: dict[str, Any] = {"help": option.help, **_presented(option)}
    if option.type is bool:
        kwargs["is_flag"] = True
    elif option.default not in (None, ()):
        kwargs.update(default=option.default, show_default=True)
    if option.choices:
        kwargs["type"] = click.Choice(option.choices)
    return click.option(option.flag, option.name, **{**kwargs, **click_kwargs})


def _presented(option: Option) -> dict[str, Any]:
    """How the record says its value is shown and taken: a tuple as a repeated flag, a file as a path
    (a folder refused), its metavar."""
    kwargs: dict[str, Any] = {"multiple": True} if option.type is tuple else {}
    if option.file:
        kwargs["type"] = click.Path(dir_okay=False, path_type=str)
    if option.metavar:
        kwargs["metavar"] = option.metavar
    return kwargs


digest_option = declared(OPTIONS["digest"])


def conversion_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every conversion command shares (convert.options.CONVERSION_OPTIONS)."""
    cli_own: dict[str, dict[str, Any]] = {
        "layout_options": {"multiple": True, "metavar": "KEY=VALUE"},
        "dtype": {"type": DtypeChoice(list(CAST_TARGETS), case_sensitive=False)},
        "max_shard_size": {"metavar": "SIZE"},
    }
    for option in reversed(CONVERSION_OPTIONS):
        fn = declared(option, **cli_own.get(option.name, {}))(fn)
    return fn


@contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on a terminal; nothing in a pipe, with --json or -q."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    # binary units, as every size this tool prints (rich's default is decimal MB)
    with stderr_progress(BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def stderr_progress(*columns: Any, file: Any = None) -> Any:
    """A transient rich progress display on stderr, or `file` (rich draws on stdout by default, which
    would put its lines into `convert ... > log`)."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(file=file) if file is not None else Console(stderr=True)
    return Progress("[progress.description]{task.description}", *columns, transient=True, console=console)


@contextmanager
def stage_display(enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """The step a long job is in (exporting, simplifying, validating), with a spinner, on a terminal.
    Drawn on a copy of stderr: while a framework runs, descriptor 2 is pointed at a scratch file."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import SpinnerColumn, TimeElapsedColumn

    with (
        open(os.dup(2), "w", encoding="utf-8") as terminal,
        stderr_progress(SpinnerColumn(), TimeElapsedColumn(), file=terminal) as bar,
    ):
        task = bar.add_task("starting", total=None)
        yield lambda name: bar.update(task, description=name, refresh=True)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    from .errors import UsageError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--layout-option {pair!r}: expected KEY=VALUE")
        options[key] = value  # read as the type the layout declares (convert.mapping.option_value)
    return options


def _run_conversion(
    conversion: str,
    src: str,
    out: str,
    reader: Any,
    target: str = "safetensors",
    output_options: dict[str, Any] | None = None,
    **declared: Any,
) -> None:
    """`declared`: the conversion options (convert.options.CONVERSION_OPTIONS) as click parsed them;
    `target`: the tensor output's format (convert.outputs.registry); `output_options`: that output's own
    options (GGUF's type and overrides)."""
    from .api import conversion_options, convert_opened, open_path, tensor_bytes
    from .pipeline import checked_destination

    quiet, as_json, dry_run = _flags().get("quiet", False), _wants_json(), declared["dry_run"]
    options = conversion_options(
        {**declared, "layout_options": _parse_options(declared["layout_options"]), "output_options": output_options or {}},
        target,
    )
    checked_destination([src], out, declared["overwrite"])  # before reading a source that may be large
    with open_path(src, conversion, reader, declared["follow_links"]) as opened:
        with progress_bar(not (as_json or quiet or dry_run), tensor_bytes(opened), "converting") as progress:
            result = convert_opened(opened, out, options, progress, target)
    if not quiet:
        for warning in result.warnings:
            click.echo(f"convert: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    elif not quiet:
        _print_result(result, dry_run)


def _print_result(result: Any, dry_run: bool) -> None:
    from .pipeline import BundleResult

    if isinstance(result, BundleResult):
        for model, r in zip(result.models, result.results, strict=True):
            tied = f", {len(r.aliases)} tied" if r.aliases else ""
            cls = model.get("class", "model")
            what = model["folder"] if cls == model["folder"] else f"{model['folder']} ({cls})"
            click.echo(f"{what}: {r.tensors} tensors{tied}, {human_bytes(r.bytes)}")
        verb = "dry run: would write" if dry_run else "wrote"
        origin = f"a {result.details['generation']} folder" if "generation" in result.details else result.format
        click.echo(f"{verb} {len(result.models)} model(s) from {origin} to {result.output}")
    elif dry_run:
        for row in result.plan:
            click.echo(f"{row['file']}  {row['name']}  {row['dtype']}  {row['shape']}  {row['bytes']}")
        click.echo(
            f"dry run: would write {len(result.files)} file(s), {result.tensors} tensors, {result.bytes} bytes to {result.output}"
        )
    else:
        tied = f", {len(result.aliases)} tied" if result.aliases else ""
        click.echo(
            f"wrote {result.output} ({', '.join(result.files)}; {result.tensors} tensors{tied}, "
            f"{human_bytes(result.bytes)} in {result.seconds:.2f} s)"
        )


def reader_option(option: Option, help_text: str | None = None) -> Callable[..., Any]:
    """The click option for a reader's option (the record its face declares); `help_text` a command's
    own wording."""
    return declared(option, **({"help": help_text} if help_text else {}))


def reader_options(where: str) -> Callable[..., Any]:
    """Every reader option (exporters.registry.READER_OPTIONS), for a command that may open any format (batch)."""
    from exporters.registry import READER_OPTIONS

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(READER_OPTIONS):
            fn = reader_option(option, f"{option.help} ({where}.)")(fn)
        return fn

    return wrap


def conversion_command(
    name: str,
    summary: str,
    conversion: str,
    reader_options: tuple[Option, ...],
    option_help: dict[str, str],
    short: str,
    examples: tuple[str, ...],
    target: str = "safetensors",
) -> None:
    """A `NAME SRC OUT` conversion command: the reader's own options, the `target` output's own, then
    the options every conversion shares, the output flags, and one-line errors."""
    from exporters.registry import READER_OPTIONS

    from .contract import ReaderOptions

    own = output_own_options(target)

    def run(src: str, out: str, **opts: Any) -> None:
        reader = ReaderOptions(**{o.name: opts.pop(o.name) for o in reader_options}).checked(READER_OPTIONS)
        chosen = {o.name: opts.pop(o.name) for o in own}
        _run_conversion(conversion, src, out, reader, target=target, output_options=chosen, **opts)

    run.__doc__ = summary
    fn: Callable[..., Any] = conversion_options(output_flags(command_errors(run)))
    for own_option in reversed(own):
        fn = declared(own_option)(fn)
    for option in reversed(reader_options):
        fn = reader_option(option, option_help.get(option.name))(fn)
    fn = click.argument("out", type=click.Path(path_type=str))(fn)
    fn = click.argument("src", type=click.Path(path_type=str))(fn)
    cli.command(name, short_help=short, epilog=example(*examples))(fn)


def batch_output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """batch's --to and, for each tensor output, its own options (convert.outputs.registry.OWN_OPTIONS):
    every job writes the format --to names; an option given without its format's --to is refused."""
    from .outputs.registry import OWN_OPTIONS

    for target, own in reversed(OWN_OPTIONS.items()):
        for option in reversed(own):
            wording = option.brief or f"as to-{target}'s."
            kwargs = {"is_flag": True} if option.type is bool else _presented(option) or {"default": None}
            fn = click.option(option.flag, option.name, help=f"With --to {target}: {wording}", **kwargs)(fn)
    valued = {t: " and ".join(o.flag for o in own if o.type is not bool) for t, own in OWN_OPTIONS.items() if own}
    return click.option(
        "--to",
        type=click.Choice(list(OWN_OPTIONS)),
        default="safetensors",
        show_default=True,
        help=f"The output format of every job ({'; '.join(f'{t}: as to-{t}, with {flags}' for t, flags in valued.items())}).",
    )(fn)


def output_own_options(target: str) -> list[Option]:
    """The options the `target` output declares that are not conversion options (GGUF's --type and
    --type-override): their values go to ConvertOptions.output_options."""
    from .outputs.registry import OWN_OPTIONS

    return list(OWN_OPTIONS[target])


def _add_conversion_commands() -> None:
    """One command per reader that has one, from the registry; `auto` takes every reader option."""
    from exporters.registry import READER_OPTIONS, READERS

    for face in READERS:
        if face.command:
            conversion_command(face.command, face.summary, face.kind, face.options, face.option_help, face.short, (face.example,))
    conversion_command(
        "auto",
        "Detect the source format by content (not by extension alone) and run the matching conversion. "
        "SRC may be a Hugging Face repository id (org/name[@revision], hf://org/name): read from the cache, or downloaded.",
        "auto",
        READER_OPTIONS,
        {},
        "Detect the format by content, then convert.",
        ("convert auto SRC out/", "convert auto model.bin out/ --dtype f16 --dry-run"),
    )
    conversion_command(
        "to-gguf",
        "Write GGUF (model.gguf, or llama.cpp's split files under --max-shard-size) for candle's quantized models, "
        "llama.cpp and realizar, from any source the readers read: 2-D and larger tensors in --type (1-D ones stay "
        "F32; rows no block fits fall back as llama-quantize does, each fallback printed and recorded), each "
        "tensor's quantization error in the manifest. --dtype does not apply: --type chooses. A Hugging Face "
        "causal LM of a family llama.cpp runs (llama, mistral, qwen2, qwen3, phi3, gpt2: config.json's model_type) "
        "gets llama.cpp's tensor names, its hyper-parameters and its tokenizer.",
        "auto",
        READER_OPTIONS,
        {},
        "Convert any source to GGUF, quantized or not.",
        (
            "convert to-gguf model.pt out/ --type q8_0",
            "convert to-gguf hf_folder/ out/ --type q4_k --type-override 'lm_head.weight=q6_k'",
            "convert to-gguf llama_folder/ out/ --type q4_k_m",
        ),
        target="gguf",
    )


_add_conversion_commands()


@cli.command(
    "to-onnx",
    short_help="Export a model as a validated ONNX graph.",
    epilog=example(
        "convert to-onnx model.pt2 out/",
        "convert to-onnx weights.safetensors out/ --module mypkg.models:build --input-shape x=1x3x32x32",
        "convert to-onnx model.pt out/ --module pkg:build --input-shape x=1x16 --quantize qdq-int8 --calibration calib.npz",
    ),
)
@click.argument("src", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option(
    "--module",
    metavar="PKG.MOD:FACTORY",
    help="Your code: import PKG.MOD (from the working folder too) and call FACTORY() for the "
    "torch.nn.Module (or, with --framework jax, the JAX model); SRC holds its weights.",
)
@click.option(
    "--framework",
    type=click.Choice(["auto", "pytorch", "keras", "jax", "neuralforecast"]),
    default="auto",
    show_default=True,
    help="Source framework (auto: by SRC's content).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="NeuralForecast: export only this model (its alias, as nf-to-safetensors names its folder; "
    "repeatable). Default: every model.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=SHAPE[:DTYPE]",
    help="Shape (and dtype) of an input for export and generated test inputs, e.g. x=1x3x32x32 or "
    "tokens=4x7:int64 (repeatable). DTYPE: float32, float16, float64, int64, int32, int16, int8, "
    "uint8, bool. Default: an integer or bool array's of --inputs, else what the module's code "
    "takes (int64 for an nn.Embedding's indices, bool or int64 for a mask), else float32.",
)
@click.option(
    "--input-range",
    "input_ranges",
    multiple=True,
    metavar="NAME=LOW:HIGH",
    help="Values of an integer or bool input, LOW included, HIGH excluded, e.g. tokens=0:21 "
    "(repeatable). Default: [0, num_embeddings) for an nn.Embedding's indices, 0/1 for a mask, "
    "else the values of --inputs, else 0 and 1.",
)
@click.option(
    "--dynamic-axis",
    "dynamic_axes",
    multiple=True,
    metavar="INPUT:AXIS=NAME",
    help="Another dynamic axis besides the batch axis, e.g. input:1=seq (repeatable).",
)
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Also validate on your inputs: an .npz with one array per input name (read without pickle).",
)
@click.option("--output-names", metavar="A,B,...", help="Names of the graph's outputs (default output, or output_0, ...).")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset (default: the exporter's).")
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    help="Largest absolute difference allowed between ONNX Runtime and the source [default: 1e-5; 1e-4 for recurrent graphs].",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE_MODES),
    help="Write an int8 graph, quantized by ONNX Runtime from the validated float one: dynamic-int8 (weights "
    "int8 per channel, activations at run time; for ort) or qdq-int8 (per-tensor QuantizeLinear/DequantizeLinear, "
    "calibrated; for ort and tract).",
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=str),
    help="qdq-int8: calibrate on this .npz, one array per input name (read without pickle) [default: the "
    "source's example inputs, else generated: standard normal floats, integers uniform in their ranges].",
)
@click.option(
    "--quantized-atol",
    type=click.FloatRange(min=0),
    help="Largest absolute difference allowed between the int8 graph and the source [default: 5% of the range "
    "of each output's values on the validation inputs].",
)
@click.option("--no-simplify", is_flag=True, help="Skip onnx-simplifier.")
@click.option(
    "--external-data-threshold",
    metavar="SIZE",
    default="2GB",
    show_default=True,
    help="Graphs larger than this keep their weights in model.onnx.data.",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    show_default=True,
    help="PyTorch only: auto tries the dynamo exporter, then falls back to TorchScript.",
)
@digest_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@output_flags
@command_errors
def to_onnx(
    src: str,
    out: str,
    input_shapes: tuple[str, ...],
    input_ranges: tuple[str, ...],
    dynamic_axes: tuple[str, ...],
    output_names: str | None,
    no_simplify: bool,
    models: tuple[str, ...],
    **opts: Any,
) -> None:
    """Export a model's graph to OUT/model.onnx, simplified, checked, and validated: ONNX Runtime must
    match the source framework at two batch sizes within --atol, or nothing is written (exit 8).
    With --quantize, that graph is then quantized to int8 and validated again within --quantized-atol.

    \b
    SRC: a torch.export program (.pt2), a Keras .keras file, a TensorFlow SavedModel folder, a
    NeuralForecast save folder or its nf-to-safetensors output (each model rebuilt from its
    manifest config into OUT/<alias>/), or with --module the weights (checkpoint or SafeTensors,
    read without torch.load) of your module.
    What is trusted: --module runs your own code. A .pt2 is opened by torch's deserializer after
    every pickle, module import and native library in it has been refused. A .keras file loads in
    Keras safe_mode (Lambda code is refused). A NeuralForecast model is rebuilt with the installed
    NeuralForecast's class from plain config values; no pickle from the folder is loaded. A
    SavedModel is a TensorFlow program that validation runs: export only SavedModels you trust."""
    from exporters.onnx_export.inputs import parse_dynamic_axes, parse_input_ranges, parse_input_shapes

    from .api import to_onnx as export_onnx

    names = [n.strip() for n in output_names.split(",")] if output_names else None
    shapes, dtypes = parse_input_shapes(input_shapes)
    quiet, as_json = _flags().get("quiet", False), _wants_json()
    with stage_display(not (as_json or quiet)) as stage:
        result = export_onnx(
            src,
            out,
            stage=stage,
            input_shapes=shapes,
            input_dtypes=dtypes,
            input_ranges=parse_input_ranges(input_ranges),
            dynamic_axes=parse_dynamic_axes(dynamic_axes),
            output_names=names,
            simplify=not no_simplify,
            models=list(models),
            **opts,
        )
    if not quiet:
        for note in (n for g in result.graphs for n in g.notes):
            click.echo(f"convert: warning: {note}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    elif not quiet:
        for g in result.graphs:
            v = g.validation
            worst = max(v["max_abs_diff"].values(), default=0.0)
            click.echo(
                f"wrote {result.output / g.folder} ({', '.join(g.files)}) with {g.exporter}"
                f"{', simplified' if g.simplified else ''}{', ' + g.quantization['mode'] if g.quantization else ''}; "
                f"ONNX Runtime matches the source at batch sizes "
                f"{', '.join(map(str, v['batch_sizes']))} ({', '.join(v['inputs'])} inputs): "
                f"max |diff| {worst:.2g} <= {_bound(v['atol'])}"
            )
        click.echo(f"{len(result.graphs)} graph{'s' if len(result.graphs) != 1 else ''} in {result.seconds:.1f} s")


def _bound(atol: float | dict[str, float]) -> str:
    """A validation's tolerance in words: one number, or an int8 graph's bound per output."""
    if isinstance(atol, dict):
        return ", ".join(f"{value:.2g} ({name})" for name, value in atol.items())
    return f"{atol:g}"


@cli.command(
    short_help="Convert many sources as one job (skips done work).",
    epilog=example(
        "convert batch models/ 'more/*.ckpt' --out-dir converted/ --jobs 2 --json",
        "convert batch --job-file jobs.toml --report report.jsonl",
        "convert batch --retry-failed report.jsonl",
    ),
)
@click.argument("sources", nargs=-1)
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=str), help="Each source's output goes to OUT_DIR/<source stem>/."
)
@click.option(
    "--job-file",
    type=click.Path(dir_okay=False, path_type=str),
    help="TOML jobs: [defaults] and [[job]] entries (schemas/batch.schema.json).",
)
@click.option("--conversion", default="auto", show_default=True, help="auto, or a command such as pth-to-safetensors.")
@batch_output_options
@conversion_options
@reader_options("for the jobs whose format takes it")
@click.option("--jobs", "workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: the CPU count).")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where jobs run: local worker processes, or Ray tasks (the ray extra) on --address's cluster.",
)
@click.option("--address", help="With --executor ray: the cluster to join (default: start a local Ray).")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=str),
    help="Also write the JSON lines report to this file.",
)
@click.option(
    "--retry-failed",
    "retry_report",
    type=click.Path(dir_okay=False, path_type=str),
    help="Rerun only the jobs that failed in this earlier report (alone: with the options it recorded).",
)
@output_flags
@command_errors
def batch(
    sources: tuple[str, ...],
    out_dir: str | None,
    job_file: str | None,
    workers: int | None,
    executor: str,
    address: str | None,
    report_path: str | None,
    retry_report: str | None,
    **options: Any,
) -> None:
    """Convert many sources (files, folders, globs) as one job. Done work is skipped, one bad file
    never stops the others, and exit 0 means every job succeeded or was skipped. Every conversion
    option applies to every job; with --job-file, those given here are defaults the file's own
    override. With --json, one JSON object per finished job, then a summary."""
    from . import batch as batch_mod
    from .errors import UsageError

    if job_file:
        jobs = batch_mod.jobs_from_file(job_file, out_dir, _given(options))
    elif sources and out_dir:
        jobs = batch_mod.jobs_from_sources(sources, out_dir, **_job_options(options))
    elif retry_report:
        jobs = batch_mod.jobs_from_report(retry_report, **_job_options(options))
    else:
        raise UsageError("give SOURCES with --out-dir, --job-file, or --retry-failed REPORT")
    if retry_report and (job_file or sources):
        jobs = batch_mod.retry_jobs(jobs, retry_report)
    quiet, as_json = _flags().get("quiet", False), _wants_json()
    report = open(report_path, "w", encoding="utf-8") if report_path else None
    try:
        with batch_display(jobs, enabled=not (as_json or quiet)) as on_result:

            def emit(result: batch_mod.JobResult) -> None:
                line = json.dumps(result.to_json())
                if as_json:
                    click.echo(line)
                if report:
                    report.write(line + "\n")
                    report.flush()
                on_result(result)

            if executor == "ray":
                summary = batch_mod.run_ray(jobs, address, emit)
            else:
                summary = batch_mod.run_local(jobs, workers or os.cpu_count() or 1, emit, on_stop=_stopping)
        counts = summary.counts()
        outcome = _batch_outcome(summary)
        closing = summary.to_json()
        if outcome is not None:  # the summary line is then the --json error object too
            closing = {**closing, "error": outcome[0], "exit_code": outcome[1], "kind": outcome[2]}
        if as_json and outcome is None:
            click.echo(json.dumps(closing))
        if report:
            report.write(json.dumps(closing) + "\n")
    finally:
        if report:
            report.close()
    if not quiet and not as_json and not summary.interrupted:
        click.echo(
            f"batch: {len(summary.results)} jobs: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"
        )
        for r in summary.results:
            if r.status == "failed":
                click.echo(f"  failed {r.source}: {r.error}", err=True)
    if outcome is not None:
        _fail(*outcome, summary.to_json())


def _batch_outcome(summary: Any) -> tuple[str, int, str] | None:
    """A finished batch's error (message, exit code, kind), or None when every job succeeded or was skipped."""
    from .errors import BatchFailedError

    counts = summary.counts()
    if summary.interrupted:
        return (
            f"interrupted after {len(summary.results)} finished job(s) ({counts['ok']} ok, {counts['skipped']} "
            f"skipped, {counts['failed']} failed); nothing was left half-written",
            EXIT_INTERRUPTED,
            "interrupted",
        )
    if not summary.ok:
        return (f"{counts['failed']} of {len(summary.results)} jobs failed", BatchFailedError.exit_code, BatchFailedError.kind)
    return None


def _job_options(options: dict[str, Any]) -> dict[str, Any]:
    """Batch's command-line options as Job's fields."""
    from exporters.registry import READER_OPTIONS

    from .batch import output_option_names
    from .contract import ReaderOptions

    names = [o.name for o in READER_OPTIONS]
    fields = {k: v for k, v in options.items() if k not in names}
    fields["layout_options"] = _parse_options(fields.pop("layout_options"))
    chosen = {k: fields.pop(k) for k in output_option_names()}
    fields["output_options"] = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v}
    if fields.get("layout_file"):
        fields["layout_file"] = os.path.abspath(fields["layout_file"])
    return {**fields, "reader": ReaderOptions(**{k: options[k] for k in names}).checked(READER_OPTIONS)}


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (not click's defaults), as a job file's keys."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    if "layout_options" in given:
        given["layout_options"] = _parse_options(given["layout_options"])
    from .batch import path_options

    for name in path_options():
        if given.get(name):
            given[name] = os.path.abspath(given[name])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}


def _stopping() -> None:
    """The first Ctrl-C of a batch: say so; a second one must not break the clean-up with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    click.echo("convert: stopping (Ctrl-C): cancelling the jobs not finished; finished ones are reported", err=True)


@contextmanager
def batch_display(jobs: list[Any], enabled: bool) -> Iterator[Callable[[Any], None]]:
    """Files done, bytes, rate and ETA on a terminal; nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield lambda result: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn

    with stderr_progress(
        BarColumn(), MofNCompleteColumn(), "{task.fields[mib]:.1f} MiB", TimeElapsedColumn(), TimeRemainingColumn()
    ) as bar:
        task = bar.add_task("converting", total=len(jobs), mib=0.0)
        written = [0]

        def advance(result: Any) -> None:
            written[0] += result.bytes
            bar.update(task, advance=1, mib=written[0] / 2**20)

        yield advance


@cli.command(
    short_help="List the tensors of any supported input, with totals.",
    epilog=example("convert inspect model.pt", "convert inspect out/ --json", "convert inspect out/model.gguf"),
)
@click.argument("path", type=click.Path(path_type=str))
@click.option("--key", help="Dotted path of the dict holding the tensors, for checkpoints.")
@click.option("--follow-links", is_flag=True, help="Read input files that are symlinks or hard links (refused by default).")
@output_flags
@command_errors
def inspect(path: str, key: str | None, follow_links: bool) -> None:
    """List the tensors (name, dtype, shape, bytes) of any supported input, in aligned columns, then
    the totals: tensors, parameters (elements) and bytes, and bytes per dtype. A GGUF file (to-gguf's
    output) shows its metadata first, and its ggml types as dtypes."""
    from .api import inspect_path

    info = inspect_path(path, key, follow_links=follow_links)
    if _wants_json():
        click.echo(json.dumps(info))
        return
    for key, value in info["details"].get("metadata", {}).items() if info["format"] == "gguf" else ():
        click.echo(f"{key} = {json.dumps(value, ensure_ascii=False)}")  # a GGUF file's metadata, before its tensors
    rows = [(t["name"], t["dtype"], "[" + ", ".join(map(str, t["shape"])) + "]", f"{t['bytes']:,}") for t in info["tensors"]]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}")
    per_dtype: dict[str, int] = {}
    for t in info["tensors"]:
        per_dtype[t["dtype"]] = per_dtype.get(t["dtype"], 0) + t["bytes"]
    params = info["parameters"]
    click.echo(
        f"{info['format']}: {len(rows)} tensors, {params:,} parameters, {human_bytes(info['bytes'])}"
        + (f" ({', '.join(f'{d} {human_bytes(n)}' for d, n in sorted(per_dtype.items()))})" if per_dtype else "")
    )
    classes = info["details"].get("pickled_classes")
    if classes:  # what the pickle named, each kept as an inert record
        click.echo(f"classes named (none imported or run): {', '.join(classes['names'])}")


def human_bytes(n: int) -> str:
    """Bytes as people read them, in binary units (the unit every size this tool prints uses)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@cli.command(
    short_help="Check an output against its manifest and its source.",
    epilog=example(
        "convert verify out/",
        "convert verify out/ --source model.pt",
        "convert verify nf_out/ --source nf_folder/   # every model of a NeuralForecast output",
    ),
)
@click.argument("out", type=click.Path(path_type=str))
@click.option(
    "--source", "source_path", type=click.Path(path_type=str), help="Also compare every tensor with this source, byte for byte."
)
@click.option(
    "--key", help="With --source: the dict holding the tensors in the checkpoint (default: the one the conversion recorded)."
)
@click.option(
    "--follow-links", is_flag=True, help="With --source: read source files that are symlinks or hard links (refused by default)."
)
@output_flags
@command_errors
def verify(out: str, source_path: str | None, key: str | None, follow_links: bool) -> None:
    """Check an output folder against its manifest (re-read with the safetensors library, the digest
    of every file and tensor in the manifest's recorded algorithm; 1.0 manifests too) and, with
    --source, against the source. Exit 0 only if everything holds."""
    from .api import verify_path
    from .errors import VerificationError

    report = verify_path(out, source_path, key, follow_links)
    quiet, as_json = _flags().get("quiet", False), _wants_json()
    if as_json and report.ok:
        click.echo(json.dumps(report.to_json()))
    elif not quiet and not as_json:
        for problem in report.problems:  # the report on stdout; stderr gets the one error line below
            click.echo(f"FAIL {problem}")
        if report.ok:
            extra = f", {report.compared_with_source} compared with the source" if source_path else ""
            click.echo(f"ok: {report.files} file(s), {report.tensors} tensors match the manifest{extra}")
    if not report.ok:
        shown = "; ".join(report.most_specific_first()[:3]) + ("; ..." if len(report.problems) > 3 else "")
        error = VerificationError(f"{len(report.problems)} problem(s): {shown}")
        error.details = report.to_json()  # with --json: the report and the error, one object
        raise error


@cli.command(
    short_help="List the target layouts, or show one layout's rules.", epilog=example("convert layouts", "convert layouts burn")
)
@click.argument("name", required=False)
@output_flags
@command_errors
def layouts(name: str | None) -> None:
    """List the built-in target layouts, or show one layout's rules."""
    from .mapping import builtin_layouts, layout_text

    as_json = _wants_json()
    found = builtin_layouts()
    if name is None:
        rows = {n: d.get("description", "") for n, d in sorted(found.items()) if n == d["name"]}
        if as_json:
            click.echo(
                json.dumps([{"name": n, "aliases": found[n].get("aliases", []), "description": d} for n, d in rows.items()])
            )
            return
        for n, d in rows.items():
            aliases = found[n].get("aliases", [])
            click.echo(f"{n}{' (also ' + ', '.join(aliases) + ')' if aliases else ''}: {d}")
        return
    if name not in found:
        from .errors import UsageError

        raise UsageError(f"unknown layout {name!r}; known: {', '.join(sorted(found))}")
    click.echo(json.dumps(found[name], indent=1) if as_json else layout_text(found[name]["name"]))


# The objects a conversion or a verify makes (a reference per tensor, its mapping, its manifest record)
# live until it ends, and the collector's default (a young-generation pass each time 700 more objects
# are alive) walks them over and over: 30% of the CPU for 20,000 small tensors, 9% still at a
# threshold of 200,000. At a million live objects a pass still runs, so cycles are still collected.
GC_THRESHOLDS = (1_000_000, 100, 100)
# numpy's OpenBLAS starts a thread per CPU when numpy is imported, and they spin while they wait:
# 0.11 of the 0.30 CPU-seconds a one-tensor conversion took here, for BLAS calls a conversion never
# needs threaded. The command asks for one before anything imports numpy (a setting the user made
# stays); the library leaves its host process's BLAS as it is.
BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1"}
# glibc serves an allocation of 128 KiB or more from a fresh mmap and trims the heap's top past
# 128 KiB free, so each chunk's temporaries (a 1 MiB chunk quantized, cast or transposed) are new
# pages the kernel zeroes and faults in, chunk after chunk: 0.25 of the 1.1 system CPU-seconds of
# `to-gguf --type q8_0` on 1.3 GB here. Freed chunks are kept for the next instead (mallopt's
# M_MMAP_THRESHOLD and M_TRIM_THRESHOLD); peak RSS did not move. glibc also gives each thread an
# arena of its own, which then keeps what that thread freed: the quantizing, hashing and flushing
# threads held 7 MiB of `to-gguf --type q4_k`'s 200 MiB peak in theirs. Two arenas (M_ARENA_MAX),
# the main thread's and one the others share, cost no CPU time measured (alternating runs: to-gguf q8_0
# of 1 GiB, 3 each; `convert auto` of a 1.3 GB PyTorch checkpoint, 4 each).
MALLOC_OPTIONS = {-3: 64 << 20, -1: 128 << 20, -8: 2}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD: bytes; M_ARENA_MAX


def _tune_process() -> None:
    """Settings for the command's own process (see above), made before numpy is imported."""
    for name, value in BLAS_THREADS.items():
        os.environ.setdefault(name, value)
    gc.set_threshold(*GC_THRESHOLDS)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
    if mallopt is not None:
        for option, setting in MALLOC_OPTIONS.items():
            mallopt(option, setting)  # returns 0 where the C library ignores it (musl)


def main() -> None:
    _tune_process()
    try:
        code = cli.main(prog_name="convert", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `convert`: the help, as click shows it
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # bad options or arguments: one line, like every other error
        hint = f" (see `{exc.ctx.command_path} --help`)" if isinstance(exc, click.UsageError) and exc.ctx else ""
        _fail(f"{exc.format_message()}{hint}", exc.exit_code, "usage")
    except click.exceptions.Abort:
        _fail("interrupted; nothing was left half-written", EXIT_INTERRUPTED, "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

"""Every output format, one line each in `all_outputs`. The faces pick from here and hand the pipeline
and `verify` what they chose; adding a format is its package, one line below and its tests (and its
own options in OWN_OPTIONS when it is a tensor output that declares any).

The outputs are loaded when a command needs them, not when the CLI starts: building the CLI's flags
needs only each tensor output's own options, declared in light modules (OWN_OPTIONS), so `convert
--help` imports no numpy. tests/faces/test_options.py holds OWN_OPTIONS equal to what each output declares."""

from __future__ import annotations

from functools import cache

from convert.errors import UsageError
from convert.output_contract import Output, OutputOption, Outputs

from .gguf.options import OPTIONS as GGUF_OPTIONS

OWN_OPTIONS: dict[str, tuple[OutputOption, ...]] = {"safetensors": (), "gguf": GGUF_OPTIONS}


@cache
def all_outputs() -> tuple[Output, ...]:
    """Every output format, tensor outputs first."""
    from .fann.output import FannOutput
    from .gguf.output import GGUFOutput
    from .safetensors.output import SafeTensorsOutput

    return (
        SafeTensorsOutput(),
        GGUFOutput(),
        FannOutput(),
    )


def outputs_for(target: str = "safetensors") -> Outputs:
    """The tensor output named `target`, with every companion that may write beside it."""
    outputs = all_outputs()
    chosen = next((o for o in outputs if o.role == "tensors" and o.name == target), None)
    if chosen is None:
        raise UsageError(f"no output format {target!r} (formats: {', '.join(o.name for o in outputs if o.role == 'tensors')})")
    return Outputs(chosen, tuple(o for o in outputs if o.role == "companion"))

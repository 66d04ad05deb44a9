"""From canonical tensors (PyTorch names and layouts) to a target framework's names and layouts.

Layouts are data: TOML rule files under convert/layouts/ (schema: schemas/layout.schema.json), or
a user's own file. Rules are tried in order; the first whose pattern matches a tensor, whose module
condition holds (the module type inferred in the architecture, and its parameters) and whose
companion tensors exist, decides that tensor's fate: one or more outputs, each a name and a chain of
transforms (convert/transforms.py), or a drop, or a refusal. Names no rule takes fail closed, all
of them listed, unless the layout passes the rest through.
"""

from __future__ import annotations

import functools
import json
import re
import time
import tomllib
from collections.abc import Hashable
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import regex

from . import transforms as tf
from .documents import check_schema, read_toml
from .dtypes import DType, dtype as lookup_dtype
from .errors import MappingError, UsageError
from .manifest_model import Alternative, InferredArchitecture, Module, Transform
from .tensors import TensorRef
from .vocabulary import CAST_LOSS, CAST_TARGETS, DTYPE_ALIASES, TIE_MODES, canonical_dtype

_PLACEHOLDER = re.compile(r"\{(\w+)(\.\.\.|:int)?\}")

# Rule patterns come from user files, and backtracking can take exponential time (`^(a|aa)+$` on 49
# characters) or long polynomial time (six `{x...}` placeholders: quadratic in the name with regex
# 2026.12, about 3.6 s on a 16,000-character name here; worse with older releases). Each match runs in
# the `regex` engine, whose timeout is checked inside the match loop: it holds in worker threads, where
# SIGALRM cannot reach, and leaves the syntax and semantics of Python's `re` (VERSION0) as they are.
# regex measures its timeout with C's clock(), the process's CPU time: matches running in parallel
# threads spend one budget together. When it fires regex raises TimeoutError (a "no match" is a
# match that finished). A budget for one match, and one for all the matches of one mapping (work must
# follow the file's size, not the number of its names that each take just under the first).
PATTERN_BUDGET_S = 1.0
MAPPING_PATTERN_BUDGET_S = 20.0


@dataclass
class _PatternClock:
    """Seconds of pattern matching left to the mapping running in this context (thread)."""

    left: float = field(default_factory=lambda: MAPPING_PATTERN_BUDGET_S)


_CLOCK: ContextVar[_PatternClock | None] = ContextVar("layout_pattern_clock", default=None)

# Options every layout takes: module types the user decides (PATH=TYPE,...), and how tied tensors are
# written ("alias": once plus a metadata alias, for loaders that re-tie; "duplicate": under every name).
# `fold_weight_norm`: write a weight-normed or spectral-normed tensor as the weight its module computes
# (for loaders that look up `weight` and have no such parametrization), or keep its pieces.
UNIVERSAL_OPTIONS: dict[str, Any] = {"module_types": "", "ties": None, "fold_weight_norm": True}


@dataclass
class MappedTensor:
    name: str
    ref: TensorRef  # the tensor as it will be written, before any final cast
    sources: list[TensorRef]
    transforms: list[Transform] = field(default_factory=list)
    annotations: dict[str, Any] = field(default_factory=dict)
    out_dtype: DType | None = None  # set when a cast is requested
    casts: list[Transform] = field(default_factory=list)  # the cast steps of `transforms`, done while writing

    @property
    def dtype(self) -> DType:
        return self.out_dtype or self.ref.dtype

    @property
    def lossy(self) -> bool:
        return any(t["op"] in ("add", "add_constant") or (t["op"] == "cast" and not t.get("lossless")) for t in self.transforms)

    @property
    def identity(self) -> Hashable | None:
        """Equal for two outputs that hold the same bytes because their sources are tied."""
        if any(s.identity is None for s in self.sources):
            return None
        return (tuple(s.identity for s in self.sources), json.dumps(self.transforms, sort_keys=True), self.dtype.code)


@dataclass
class Rule:
    pattern: regex.Pattern[str]
    module: str | None  # in `rules`: the tensor's module type; in `post`: the first source's
    where: dict[str, Any]
    companions: list[str]
    outputs: list[dict[str, Any]]
    drop: bool
    refuse: str | None
    if_option: str | None
    derive: dict[str, dict[str, Any]]  # new variable: {"from": captured variable, "map": {value: text}}
    present: list[str] = field(default_factory=list)  # templates that must exist (not consumed)
    note: str | None = None  # printed once, with the names, when a drop rule fires

    def match(self, name: str) -> regex.Match[str] | None:
        """The pattern matched at the start of `name`, within the time budgets (a usage error past them)."""
        clock = _CLOCK.get()
        limit = PATTERN_BUDGET_S if clock is None else min(PATTERN_BUDGET_S, clock.left)
        started = time.perf_counter()
        try:
            if limit <= 0:
                raise TimeoutError
            return self.pattern.match(name, timeout=limit)
        except TimeoutError:
            spent = (
                f"the {PATTERN_BUDGET_S:g} s time budget of one match"
                if limit == PATTERN_BUDGET_S
                else f"the {MAPPING_PATTERN_BUDGET_S:g} s time budget of all the layout's matches"
            )
            raise UsageError(
                f"layout rule pattern {self.pattern.pattern[:200]!r} used up {spent} on a "
                f"{len(name):,}-character tensor name (catastrophic backtracking?); simplify it"
            ) from None
        finally:
            if clock is not None:
                clock.left -= time.perf_counter() - started

    def variables(self, match: regex.Match[str]) -> dict[str, str]:
        found = {k: v or "" for k, v in match.groupdict().items()}
        for name, spec in self.derive.items():
            found[name] = spec["map"].get(found.get(spec["from"], ""), found.get(spec["from"], ""))
        return found

    def companions_for(self, variables: dict[str, str]) -> list[str]:
        return [fill(c, variables) for c in self.companions]

    def present_for(self, variables: dict[str, str]) -> list[str]:
        return [fill(c, variables) for c in self.present]


@dataclass
class Layout:
    name: str
    description: str
    rules: list[Rule]
    post: list[Rule]  # applied to outputs after the rules: append transforms or rename by target name
    passthrough: bool
    dtypes: list[str] | None
    cast: dict[str, str]
    renumber: bool
    extra_index_names: list[str]
    warnings: list[str | dict[str, str]]  # a text, or {text, module}: only when that module is present
    options: dict[str, Any]
    source: str  # where the rules came from
    index_metadata: dict[str, str] = field(default_factory=dict)  # extra `metadata` keys in shard indexes
    loader_ties: str = "duplicate"  # what the loader does with a missing tied name (the rule file's `ties`)

    @property
    def ties(self) -> str:
        """How tied tensors are written: the `ties` option, else what the loader needs."""
        return self.options.get("ties") or self.loader_ties


@dataclass
class MappingResult:
    tensors: list[MappedTensor]
    dropped: list[str]
    warnings: list[str]


# --- loading -------------------------------------------------------------------------------------


def _layout_dir() -> Traversable:
    return resources.files("convert").joinpath("layouts")


@functools.cache
def _read_builtin(file_name: str) -> dict[str, Any] | None:
    entry = _layout_dir().joinpath(file_name)
    return tomllib.loads(entry.read_text(encoding="utf-8")) if entry.is_file() else None


def builtin_layout(name: str) -> dict[str, Any] | None:
    """A built-in rule file by layout name (its file name) or by one of its aliases."""
    return _read_builtin(f"{name}.toml") or builtin_layouts().get(name)


def builtin_layouts() -> dict[str, dict[str, Any]]:
    """Every built-in rule file, by layout name and by each of its aliases."""
    found: dict[str, dict[str, Any]] = {}
    for entry in sorted(_layout_dir().iterdir(), key=lambda e: e.name):
        doc = _read_builtin(entry.name) if entry.name.endswith(".toml") else None
        if doc is not None:
            for name in [doc["name"], *doc.get("aliases", [])]:
                found[name] = doc
    return found


def layout_text(name: str) -> str:
    """The rule file of a built-in layout, as written."""
    return _layout_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")


def load_layout(name: str = "pytorch", layout_file: str | Path | None = None, options: dict[str, Any] | None = None) -> Layout:
    """A built-in layout by name, or a user's rule file (which may extend a built-in one)."""
    if layout_file is not None:
        doc = read_toml(layout_file, "layout file")
        where = str(layout_file)
        check_schema(doc, "layout.schema.json", f"layout file {where}", UsageError)
    else:
        found = builtin_layout(name)
        if found is None:
            raise UsageError(f"unknown layout {name!r}; known: {', '.join(sorted(builtin_layouts()))}")
        doc, where = found, f"builtin:{found['name']}"
    merged = _resolve_extends(doc, depth=0)
    defaults = {**UNIVERSAL_OPTIONS, **merged.get("options", {})}
    unknown = set(options or {}) - set(defaults)
    if unknown:
        raise UsageError(f"layout {merged['name']!r} has no option {sorted(unknown)[0]!r}")
    opts = {**defaults, **{k: option_value(k, v, defaults[k]) for k, v in (options or {}).items()}}
    if opts["ties"] not in (None, *TIE_MODES):
        raise UsageError(f"--layout-option ties={opts['ties']!r}: choose {' or '.join(TIE_MODES)}")
    return Layout(
        name=merged["name"],
        description=merged.get("description", ""),
        rules=[_rule(r) for r in merged.get("rules", [])],
        post=[_rule(r) for r in merged.get("post", [])],
        passthrough=merged.get("passthrough", False),
        dtypes=merged.get("dtypes"),
        cast=merged.get("cast", {}),
        renumber=merged.get("renumber_sequential", False),
        extra_index_names=merged.get("extra_index_names", []),
        warnings=merged.get("warnings", []),
        options=opts,
        source=where,
        index_metadata=merged.get("index_metadata", {}),
        loader_ties=merged.get("ties", "duplicate"),
    )


BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_bool(name: str, value: str | bool) -> bool:
    """A boolean option's value, strictly: a typo must not flip a setting (any word but "false"
    counted as true once, so `=no` dropped tensors)."""
    if isinstance(value, bool):
        return value
    found = BOOLEAN_WORDS.get(str(value).strip().lower())
    if found is None:
        raise UsageError(f"option {name}={value!r}: expected one of true/false/yes/no/1/0")
    return found


def option_value(name: str, value: Any, default: Any) -> Any:
    """A layout option given as text (the command line) or a value (the API): a boolean option
    (its default is one) is read strictly; others are kept as given."""
    return parse_bool(name, value) if isinstance(default, bool) else value


def _resolve_extends(doc: dict[str, Any], depth: int) -> dict[str, Any]:
    """A layout that extends another takes the other's settings, with its own rules tried first."""
    if "extends" not in doc:
        return doc
    base_doc = builtin_layout(doc["extends"])
    if base_doc is None or depth > 8:
        raise UsageError(f"layout {doc.get('name')!r} extends unknown layout {doc['extends']!r}")
    base = _resolve_extends(base_doc, depth + 1)
    merged = {**base, **{k: v for k, v in doc.items() if k not in ("rules", "post", "extends", "options", "aliases")}}
    merged["rules"] = doc.get("rules", []) + base.get("rules", [])
    merged["post"] = doc.get("post", []) + base.get("post", [])
    merged["options"] = {**base.get("options", {}), **doc.get("options", {})}
    return merged


def _rule(doc: dict[str, Any]) -> Rule:
    pattern = compile_regex(doc["regex"]) if "regex" in doc else compile_pattern(doc["match"])
    single = {k: doc[k] for k in ("to", "transforms", "annotations") if k in doc}
    outputs = doc.get("outputs") or [single]
    return Rule(
        pattern,
        doc.get("module"),
        doc.get("where", {}),
        doc.get("with", []),
        outputs,
        doc.get("drop", False),
        doc.get("refuse"),
        doc.get("if_option"),
        doc.get("derive", {}),
        doc.get("if_present", []),
        doc.get("note"),
    )


def compile_regex(text: str) -> regex.Pattern[str]:
    """A rule's `regex`, in the engine that can time a match out."""
    try:
        return regex.compile(text)
    except regex.error as exc:
        raise UsageError(f"layout rule regex {text[:200]!r} does not compile: {exc}") from None


def compile_pattern(text: str) -> regex.Pattern[str]:
    """`{name}` one dotted component, `{name:int}` digits, `{name...}` one or more components; a
    leading `{name...}.` may also be empty, so rules for `lstm.weight_ih_l0` fit a bare `weight_ih_l0`."""
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(text):
        out.append(re.escape(text[pos : m.start()]))
        kind = {None: r"[^.]+", ":int": r"\d+", "...": r".+"}[m.group(2)]
        if m.start() == 0 and m.group(2) == "..." and text[m.end() : m.end() + 1] == ".":
            out.append(f"(?:(?P<{m.group(1)}>{kind})\\.)?")
            pos = m.end() + 1
            continue
        out.append(f"(?P<{m.group(1)}>{kind})")
        pos = m.end()
    out.append(re.escape(text[pos:]))
    return regex.compile("".join(out) + r"\Z")


def fill(template: str, variables: dict[str, str]) -> str:
    """A target name from a template; an empty prefix leaves no stray dot (`{p}.weight` -> `weight`)."""
    return ".".join(part for part in substitute(template, variables).split(".") if part)


def substitute(template: str, variables: dict[str, str]) -> str:
    try:
        return _PLACEHOLDER.sub(lambda m: variables[m.group(1)], template)
    except KeyError as exc:
        raise MappingError(f"rule text {template!r} uses {exc}, which its pattern does not capture") from None


# --- applying ------------------------------------------------------------------------------------


def apply_layout(layout: Layout, tensors: list[TensorRef], architecture: InferredArchitecture) -> MappingResult:
    token = _CLOCK.set(_PatternClock())
    try:
        return _apply_layout(layout, tensors, architecture)
    finally:
        _CLOCK.reset(token)


def _apply_layout(layout: Layout, tensors: list[TensorRef], architecture: InferredArchitecture) -> MappingResult:
    modules = {name: mod for mod in architecture.get("modules", []) for name in mod["tensors"]}
    folds: dict[str, tuple[list[TensorRef], Transform]] = {}
    if layout.options.get("fold_weight_norm"):
        tensors = _fold(layout, tensors, architecture, modules, folds)
    refs = {t.name: t for t in tensors}
    consumed: set[str] = set()
    produced: list[tuple[int, MappedTensor]] = []
    no_rule: list[tuple[int, TensorRef]] = []
    dropped: list[str] = []
    notes: dict[str, list[str]] = {}
    for pos, t in enumerate(tensors):
        if t.name in consumed:
            continue
        outcome = _first_rule(layout, t.name, refs, modules)
        if outcome is None:
            no_rule.append((pos, t))  # decided at the end: a later rule may take it as a companion
            continue
        rule, variables, companions = outcome
        if rule.refuse:
            raise MappingError(f"layout {layout.name}: {substitute(rule.refuse, {**variables, 'name': t.name})}")
        consumed.update([t.name, *companions])
        if rule.drop:
            dropped.append(t.name)
            if rule.note:
                notes.setdefault(rule.note, []).append(t.name)
            continue
        sources = [t] + [refs[c] for c in companions]
        for out in rule.outputs:
            name = fill(out["to"], variables) if "to" in out else t.name
            produced.append((pos, _mapped(name, sources, out.get("transforms", []), out.get("annotations", {}))))
    leftovers = [(pos, t) for pos, t in no_rule if t.name not in consumed]
    if leftovers and not layout.passthrough:
        names = ", ".join(t.name for _, t in leftovers)
        raise MappingError(f"layout {layout.name}: no rule for {len(leftovers)} tensor(s): {names}")
    _check_guesses(layout, tensors, refs, modules, folds)
    produced += [(pos, MappedTensor(t.name, t, [t])) for pos, t in leftovers]
    mapped = [m for _, m in sorted(produced, key=lambda item: item[0])]
    if layout.post:
        mapped = [_post(layout, m, modules) for m in mapped]
    mapped = [_unfold(layout, m, folds) for m in mapped]
    if layout.renumber:
        _renumber(mapped)
    _check_unique(layout, mapped)
    present = {mod["type"] for mod in architecture.get("modules", [])}
    warnings = [w if isinstance(w, str) else w["text"] for w in layout.warnings if isinstance(w, str) or w["module"] in present]
    warnings += [f"layout {layout.name}: dropped {', '.join(names)}: {note}" for note, names in notes.items()]
    return MappingResult(mapped, dropped, warnings)


_DECIDE = "decide with --layout-option module_types=PATH=TYPE[,PATH=TYPE...]"
_PARAMETRIZATION_PIECE = re.compile(r"(?:.+\.)?parametrizations\.[^.]+\.(?:original[0-9]*|[0-9]+\..+)")


def _fold(
    layout: Layout,
    tensors: list[TensorRef],
    architecture: InferredArchitecture,
    modules: dict[str, Module],
    folds: dict[str, tuple[list[TensorRef], Transform]],
) -> list[TensorRef]:
    """Each weight-normed or spectral-normed tensor as one folded tensor, in its first piece's place,
    under the name its module computes (P.weight): the layout's rules then treat it as a plain weight,
    and `_unfold` gives the outputs made from it the pieces as sources and the fold as their first step.
    A parametrization no fold knows is refused: its pieces would reach a name-lookup loader as strays."""
    refs = {t.name: t for t in tensors}
    replaced: dict[str, TensorRef | None] = {}
    for mod in architecture.get("modules", []):
        for tensor, fold in mod.get("parametrizations", {}).items():
            name = f"{mod['path']}.{tensor}" if mod["path"] else tensor
            if name in refs or not all(p in refs for p in fold["tensors"]):
                continue
            pieces = [refs[p] for p in fold["tensors"]]
            step = fold_step(fold["type"], mod["type"])
            folded = tf.derived(name, pieces, [step])
            folds[name] = (pieces, step)
            modules[name] = mod
            replaced.update({fold["tensors"][0]: folded, **dict.fromkeys(fold["tensors"][1:])})
    strays = [t.name for t in tensors if t.name not in replaced and _PARAMETRIZATION_PIECE.fullmatch(t.name)]
    if strays:
        raise MappingError(
            f"layout {layout.name}: {', '.join(strays[:10])} belong to a parametrization this tool cannot fold "
            "(it folds weight_norm and spectral_norm); --layout-option fold_weight_norm=false keeps the pieces"
        )
    out = [replaced[t.name] if t.name in replaced else t for t in tensors]
    return [t for t in out if t is not None]


def fold_step(kind: str, module_type: str) -> Transform:
    """The transform that folds a `kind` parametrization of a `module_type`'s weight: spectral norm
    runs over dim 1 for a ConvTranspose (torch's default for it) and dim 0 for every other module."""
    if kind == "spectral_norm":
        return {"op": kind, "dim": 1 if module_type.startswith("ConvTranspose") else 0}
    return {"op": kind}


def _unfold(layout: Layout, m: MappedTensor, folds: dict[str, tuple[list[TensorRef], Transform]]) -> MappedTensor:
    """An output made from a folded tensor, recorded from the pieces: the fold its first step."""
    hit = [s.name for s in m.sources if s.name in folds]
    if not hit:
        return m
    if len(m.sources) != 1:
        raise MappingError(
            f"layout {layout.name}: {m.name!r} joins the folded {hit[0]!r} with other tensors, which no fold records"
        )
    pieces, step = folds[hit[0]]
    return MappedTensor(m.name, m.ref, pieces, [step.copy(), *m.transforms], dict(m.annotations))


def _check_guesses(
    layout: Layout,
    tensors: list[TensorRef],
    refs: dict[str, TensorRef],
    modules: dict[str, Module],
    folds: dict[str, tuple[list[TensorRef], Transform]],
) -> None:
    """A tensor whose module type is a guess (the architecture lists alternatives) must not have its
    name, bytes or fate decided by that guess (its fold included): a loader looks names up, so a name
    that differs between the types it fits is as wrong as bytes that do. Refused, naming the tensors
    and the option."""
    refused = []
    for t in tensors:
        mod = modules.get(t.name)
        if mod is None or not mod.get("alternatives"):
            continue
        fold = folds.get(t.name)
        fates = [
            (_fate(layout, t, refs, {**modules, t.name: {**mod, **alt}}), fold_step(fold[1]["op"], alt["type"]) if fold else None)
            for alt in [Alternative(type=mod["type"], params=mod["params"]), *mod["alternatives"]]
        ]
        if len({json.dumps(f, sort_keys=True) for f in fates}) > 1:
            types = " or ".join([mod["type"], *(a["type"] for a in mod["alternatives"])])
            refused.append(f"{t.name} ({types})")
    if refused:
        raise MappingError(
            f"layout {layout.name}: how {len(refused)} tensor(s) are named or written depends on a guessed "
            f"module type: {', '.join(refused)}; {_DECIDE}"
        )


def _fate(layout: Layout, t: TensorRef, refs: dict[str, TensorRef], modules: dict[str, Module]) -> tuple[tuple[str, ...], str]:
    """(output names, everything else about the outcome) for one tensor under given module types."""
    outcome = _first_rule(layout, t.name, refs, modules)
    if outcome is None and not layout.passthrough:
        return (), "unmapped"
    rule, variables, companions = outcome or (None, {}, [])
    if rule is not None and (rule.refuse or rule.drop):
        return (), "refuse" if rule.refuse else "drop"
    names: list[str] = []
    rest: list[Any] = [companions]  # JSON: the companions, then each output's transforms
    for out in rule.outputs if rule is not None else [{}]:
        name = fill(out["to"], variables) if "to" in out else t.name
        post = _post_rule(layout, name, t.name, modules)
        names.append(post[0] if post else name)
        rest.append([out.get("transforms", []), post[1] if post else []])
    return tuple(names), json.dumps(rest, sort_keys=True)


def _first_rule(
    layout: Layout, name: str, refs: dict[str, TensorRef], modules: dict[str, Module]
) -> tuple[Rule, dict[str, str], list[str]] | None:
    for rule in layout.rules:
        if rule.if_option and not layout.options.get(rule.if_option):
            continue
        m = rule.match(name)
        if m is None:
            continue
        if rule.module is not None and not _module_fits(modules.get(name), rule.module, rule.where):
            continue
        variables = rule.variables(m)
        companions = rule.companions_for(variables)
        if any(c not in refs for c in [*companions, *rule.present_for(variables)]):
            continue
        return rule, variables, companions
    return None


def _post(layout: Layout, m: MappedTensor, modules: dict[str, Module]) -> MappedTensor:
    """The first post rule matching an output's name (and its first source's module) renames it
    and appends its transforms."""
    found = _post_rule(layout, m.name, m.sources[0].name, modules)
    if found is None:
        return m
    name, transforms, annotations = found
    return _mapped(name, m.sources, m.transforms + transforms, {**m.annotations, **annotations})


def _post_rule(
    layout: Layout, name: str, source: str, modules: dict[str, Module]
) -> tuple[str, list[Transform], dict[str, Any]] | None:
    """(new name, transforms to append, annotations) from the first post rule that fits, if any."""
    for rule in layout.post:
        if rule.if_option and not layout.options.get(rule.if_option):
            continue
        match = rule.match(name)
        if match is None:
            continue
        if rule.module is not None and not _module_fits(modules.get(source), rule.module, rule.where):
            continue
        variables = rule.variables(match)
        out = rule.outputs[0] if rule.outputs else {}
        return (fill(out["to"], variables) if "to" in out else name), out.get("transforms", []), out.get("annotations", {})
    return None


def _module_fits(module: Module | None, type_name: str, where: dict[str, Any]) -> bool:
    if module is None or module["type"] != type_name:
        return False
    params = module.get("params", {})
    return all(_param_fits(params.get(k), v) for k, v in where.items())


def _param_fits(value: Any, wanted: Any) -> bool:
    """`wanted` is a value, or a string comparison such as '>1' or '!=1' for numbers."""
    if isinstance(wanted, str) and wanted[:1] in "<>!=" and isinstance(value, (int, float)):
        op, num = re.match(r"(<=|>=|!=|==|<|>)(-?\d+)", wanted).groups()  # type: ignore[union-attr]
        n = int(num)
        return {"<": value < n, ">": value > n, "<=": value <= n, ">=": value >= n, "!=": value != n, "==": value == n}[op]
    return bool(value == wanted)


def _mapped(name: str, sources: list[TensorRef], transforms: list[Transform], annotations: dict[str, Any]) -> MappedTensor:
    if not transforms and len(sources) == 1 and sources[0].name == name:
        return MappedTensor(name, sources[0], sources, [], dict(annotations))
    return MappedTensor(name, tf.derived(name, sources, transforms), sources, [t.copy() for t in transforms], dict(annotations))


def _renumber(mapped: list[MappedTensor]) -> None:
    """Make numeric path components contiguous per parent (nn.Sequential leaves gaps where
    parameter-free layers sit; burn's Vec of modules does not)."""
    seen: dict[str, set[int]] = {}
    for m in mapped:
        parts = m.name.split(".")
        for i, p in enumerate(parts):
            if p.isascii() and p.isdigit():
                seen.setdefault(".".join(parts[:i]), set()).add(int(p))
    remap = {parent: {old: new for new, old in enumerate(sorted(nums))} for parent, nums in seen.items()}
    for m in mapped:
        parts = m.name.split(".")
        renamed = list(parts)  # parents are looked up by their original names (nested Sequentials)
        for i, p in enumerate(parts):
            if p.isascii() and p.isdigit():
                renamed[i] = str(remap[".".join(parts[:i])][int(p)])
        new_name = ".".join(renamed)
        if new_name != m.name:
            m.name = new_name
            m.ref = m.ref.renamed(new_name)


def _check_unique(layout: Layout, mapped: list[MappedTensor]) -> None:
    seen: set[str] = set()
    for m in mapped:
        if m.name in seen:
            raise MappingError(f"layout {layout.name}: two tensors would be named {m.name!r}")
        seen.add(m.name)


# --- dtypes --------------------------------------------------------------------------------------


def apply_dtypes(mapped: list[MappedTensor], requested: str | None, layout: Layout, on_loss: str = "refuse") -> None:
    """The user's --dtype for floating tensors, then the layout's own dtype rules; `on_loss` (see
    convert.vocabulary.CAST_LOSS) says what a narrowing cast may do with values the target cannot hold."""
    if on_loss not in CAST_LOSS:
        raise UsageError(f"--cast-loss {on_loss!r}: choose one of {', '.join(CAST_LOSS)}")
    target = None
    if requested is not None:
        target = CAST_TARGETS.get(canonical_dtype(requested))
        if target is None:
            raise UsageError(f"--dtype {requested!r}: choose one of {', '.join(CAST_TARGETS)} (or {', '.join(DTYPE_ALIASES)})")
    for m in mapped:
        code = m.ref.dtype.code
        if target and m.ref.dtype.is_float and code != target:
            _cast(m, target, on_loss)
        final = m.dtype.code
        if layout.dtypes is not None and final not in layout.dtypes:
            to = layout.cast.get(final)
            if to is None:
                raise MappingError(
                    f"layout {layout.name}: tensor {m.name!r} is {final}, which the target does not load "
                    f"(it loads {', '.join(layout.dtypes)})"
                )
            _cast(m, to, on_loss)


_FLOAT_RANK = {"F64": 3, "F32": 2, "F16": 1, "BF16": 1, "F8_E4M3": 0, "F8_E5M2": 0, "F8_E8M0": 0}


def _cast(m: MappedTensor, to: str, on_loss: str) -> None:
    """A cast step, done by the writer while streaming (a second one, the layout widening what
    --dtype asked for, follows the first there too, as the recorded chain replays)."""
    lossless = _lossless(m.dtype.code, to)
    step: Transform = {"op": "cast", "to": to, "lossless": lossless}
    if not lossless:
        step["on_loss"] = on_loss
    m.transforms.append(step)
    m.casts.append(step)
    m.out_dtype = lookup_dtype(to)


def _lossless(src: str, to: str) -> bool:
    if src in _FLOAT_RANK and to in _FLOAT_RANK:
        return _FLOAT_RANK[to] > _FLOAT_RANK[src]
    a, b = lookup_dtype(src), lookup_dtype(to)
    if src == "BOOL":
        return True
    return not a.is_float and not b.is_float and b.itemsize > a.itemsize and (src[0] == to[0] or src[0] == "U")

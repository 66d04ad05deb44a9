"""The opcode walk behind the pickle safety pre-scan, fast for the pickles real checkpoints are.

`convert.pickle_reader._prescan` walks a pickle's opcodes with `pickletools` and simulates the
unpickler's stack (nesting depth of every object, memo indices, the globals named), refusing what the
C unpickler cannot be trusted with. `pickletools` decodes every opcode into Python objects: a state
dict of 20,000 tensors has 690,000 opcodes, 3.5 s. `clean` walks the same opcodes straight from the
bytes with the same stack simulation and answers only "the pre-scan has nothing to say". Whenever it
meets anything else (an opcode with a text argument other than GLOBAL, an argument the pickletools
reader would refuse, anything the pre-scan refuses, a stack that does not add up) it answers False
and the full pre-scan runs from the start, so every refusal is still the pre-scan's own.
"""

from __future__ import annotations

import pickletools
import struct
from typing import Any

from .errors import ConvertError
from .pickle_denylist import denied

# Deepest container nesting a pickle may build. Real checkpoints (state dicts, Lightning
# hyper-parameters, pandas objects in NeuralForecast pickles) stay under 20; CPython hashes tuples
# and compares containers recursively in C, so a key nested 200,000 deep overflows the C stack.
MAX_NESTING = 100
MUTATORS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})


class NestedTooDeeply(Exception):
    """Raised by `simulate`; the pre-scan turns it into its refusal naming the pickle."""


# An opcode's effect on the stack: (inputs before a MARK's slice or None without one, total inputs
# without a MARK, outputs, whether it changes its first input in place).
Effect = tuple[int | None, int, int, bool]
EFFECTS: dict[str, Effect] = {
    op.name: (
        op.stack_before.index(pickletools.markobject) if pickletools.markobject in op.stack_before else None,
        len(op.stack_before),
        len(op.stack_after),
        op.name in MUTATORS,
    )
    for op in pickletools.opcodes
}


def simulate(effect: Effect, stack: list[int], marks: list[int], depths: list[int]) -> None:
    """One opcode's effect on the simulated stack: pop its inputs, push its outputs with their depth.
    A stack shorter than the opcode needs gives what it holds (IndexError only for a missing MARK)."""
    mark_at, pre, after, mutator = effect
    if mark_at is not None:
        at = marks.pop()
        children = stack[at:]
        del stack[at:]
        pre = mark_at
    else:
        children = []
    if pre:
        children = stack[-pre:] + children
        del stack[-pre:]
    inner = 1 + max((depths[c] for c in children[1 if mutator else 0 :]), default=-1)
    if mutator:  # the container changes in place: memo references see the new depth
        target = children[0]
        depths[target] = max(depths[target], inner)
        made = [target]
    else:
        made = []
        for _ in range(after):
            depths.append(max(inner, 0))
            made.append(len(depths) - 1)
    if made and depths[made[0]] > MAX_NESTING:
        raise NestedTooDeeply
    stack.extend(made)


# How each opcode's argument is read from the bytes: a fixed size, or a length of 1, 4 (signed or
# not) or 8 bytes before the data, and whether the data is text (utf-8 as pickletools decodes it, or
# latin-1). Opcodes with a text argument (protocol 0) are left to the full pre-scan, GLOBAL aside.
_LENGTH = {-2: ("<B", 1), -3: ("<i", 4), -4: ("<I", 4), -5: ("<Q", 8)}
_TEXT = {
    "unicodestring1": "utf-8",
    "unicodestring4": "utf-8",
    "unicodestring8": "utf-8",
    "string1": "latin-1",
    "string4": "latin-1",
}
_SPECIAL = frozenset({"GLOBAL", "STACK_GLOBAL", "NEXT_BUFFER", "MARK", "DUP", "POP", "STOP", "MEMOIZE"})
_MEMO = {"BINPUT": "<B", "LONG_BINPUT": "<I", "BINGET": "<B", "LONG_BINGET": "<I"}


# How `_walk` treats an opcode: a memo PUT or GET by a 1- or 4-byte index, plain outputs of depth 0
# (ints, None, bools, empty containers, PROTO, FRAME), MARK, a length-prefixed argument (strings,
# bytes), one output from inputs taken off the stack (TUPLE2, REDUCE) or from a MARK's slice (TUPLE,
# DICT); anything else in `_step`. Numbered in the order `_walk` tests them, the most frequent first.
_PUT4, _PLAIN, _GET1, _POPS, _SIZED, _MARK, _MARKED, _PUT1, _GET4, _STEP = range(10)


def _kind(name: str, arg: pickletools.ArgumentDescriptor | None, effect: Effect) -> int:
    mark_at, pre, after, mutator = effect
    if name in _MEMO:
        return {"BINPUT": _PUT1, "LONG_BINPUT": _PUT4, "BINGET": _GET1, "LONG_BINGET": _GET4}[name]
    if name == "MARK":
        return _MARK
    if name in _SPECIAL or mutator or (arg is not None and arg.n < 0 and name != "GLOBAL" and arg.n not in _LENGTH):
        return _STEP
    if arg is not None and arg.n in _LENGTH and mark_at is None and not pre and after == 1:
        return _SIZED
    if arg is None and mark_at is None and 0 < pre <= 3 and after == 1:
        return _POPS
    if arg is None and mark_at == 0 and after == 1:
        return _MARKED
    if mark_at is None and not pre and (arg is None or arg.n >= 0):
        return _PLAIN
    return _STEP


def _table() -> list[tuple[Any, ...] | None]:
    """Per opcode byte: (how it is walked, memo index or length format, fixed or length size, inputs,
    outputs, text encoding, whether it makes a string, and `_step`'s entry: name, fixed size, length
    format, length size, text encoding, effect, whether it makes a string)."""
    table: list[tuple[Any, ...] | None] = [None] * 256
    for op in pickletools.opcodes:
        arg = op.arg
        if arg is not None and arg.n == -1 and op.name != "GLOBAL":
            continue  # a text argument: the full pre-scan reads it
        fixed = arg.n if arg is not None and arg.n > 0 else 0
        length, size = _LENGTH.get(arg.n, (None, 0)) if arg is not None else (None, 0)
        text = _TEXT.get(arg.name) if arg is not None else None
        effect, string = EFFECTS[op.name], op.name in STRING_OPS
        kind = _kind(op.name, arg, effect)
        step = (op.name, fixed, length, size, text, effect, string)
        table[op.code.encode("latin-1")[0]] = (
            kind,
            _MEMO.get(op.name) or length,
            fixed or size,
            effect[1],
            effect[2],
            text,
            string,
            step,
        )
    return table


_TABLE = _table()


def clean(data: bytes) -> bool:
    """True when the pre-scan of `data` (from its start to STOP) would find nothing to refuse and
    stop at STOP; False when the full pre-scan must look (it refuses, or this walk cannot tell)."""
    try:
        return _walk(data)
    except (ConvertError, NestedTooDeeply, IndexError, KeyError, ValueError, struct.error):
        return False


def _walk(data: bytes) -> bool:
    depths: list[int] = []  # nesting depth of every object made, by creation order
    stack: list[int] = []  # the objects on the unpickler's stack, as indices into depths
    marks: list[int] = []  # stack lengths at each MARK
    memo: dict[int, int] = {}
    strings: dict[int, str] = {}  # the text of the objects made by string opcodes
    made = 0  # memo entries
    count = 0  # objects made: len(depths)
    pos = 0
    end = len(data)
    unpack = struct.unpack_from
    table = _TABLE
    while True:
        entry = table[data[pos]]  # IndexError past the end: pickletools says "exhausted before STOP"
        if entry is None:
            return False
        kind = entry[0]
        pos += 1
        if kind == _PUT4 or kind == _PUT1:
            if kind == _PUT1:
                index = data[pos]
                pos += 1
            else:
                index = unpack("<I", data, pos)[0]
                pos += 4
            if index > made + 1:  # Python 2's cPickle numbers its entries from 1: one ahead is allowed
                return False
            made += 1
            memo[index] = stack[-1]
        elif kind == _PLAIN:
            pos += entry[2]
            if pos > end:
                return False
            if entry[4]:
                depths.append(0)
                stack.append(count)
                count += 1
        elif kind == _GET1:
            stack.append(memo[data[pos]])
            pos += 1
        elif kind == _POPS and len(stack) >= entry[3]:
            inputs = entry[3]
            if inputs == 1:
                depth = depths[stack[-1]] + 1
            elif inputs == 2:
                depth = max(depths[stack[-1]], depths[stack[-2]]) + 1
                del stack[-1]
            else:
                depth = 1 + max([depths[c] for c in stack[-inputs:]])
                del stack[1 - inputs :]
            if depth > MAX_NESTING:
                return False
            depths.append(depth)
            stack[-1] = count  # the inputs' last place holds the output
            count += 1
        elif kind == _SIZED:
            n = unpack(entry[1], data, pos)[0]
            pos += entry[2]
            if n < 0 or pos + n > end:
                return False
            if entry[6]:  # utf-8 as pickletools decodes it (a lone surrogate passes), or latin-1
                strings[count] = str(data[pos : pos + n], entry[5], "surrogatepass")
            depths.append(0)
            stack.append(count)
            count += 1
            pos += n
        elif kind == _MARK:
            marks.append(len(stack))
        elif kind == _MARKED:
            at = marks.pop()
            depth = 1 + max([depths[c] for c in stack[at:]], default=-1)
            del stack[at:]
            if depth > MAX_NESTING:
                return False
            depths.append(depth)
            stack.append(count)
            count += 1
        elif kind == _GET4:
            stack.append(memo[unpack("<I", data, pos)[0]])
            pos += 4
        else:
            step = entry[7]
            pos = _step(data, pos, step, stack, marks, depths, strings)
            count = len(depths)
            if step[0] == "MEMOIZE":
                memo[made] = stack[-1]
                made += 1
            elif step[0] == "STOP":
                return True


def _step(
    data: bytes, pos: int, entry: tuple[Any, ...], stack: list[int], marks: list[int], depths: list[int], strings: dict[int, str]
) -> int:
    """An opcode that reads a length-prefixed argument, names a global or pops inputs; the position after it."""
    name, fixed, length, size, text, effect, string = entry
    arg: str | None = None
    if length is not None:
        n = struct.unpack_from(length, data, pos)[0]
        pos += size
        if n < 0 or pos + n > len(data):
            raise ValueError("argument past the end")
        if text is not None:
            arg = str(data[pos : pos + n], text, "surrogatepass" if text == "utf-8" else "strict")
        pos += n
    elif name == "GLOBAL":
        arg, pos = _global(data, pos)
    else:
        if pos + fixed > len(data):
            raise ValueError("argument past the end")
        pos += fixed
    if name == "MARK":
        marks.append(len(stack))
    elif name == "DUP":
        stack.append(stack[-1])
    elif name == "POP" and marks and marks[-1] == len(stack):
        marks.pop()
    elif name == "NEXT_BUFFER":
        raise ValueError("out-of-band buffer: the pre-scan refuses it")
    elif name == "MEMOIZE":
        if not stack:
            raise IndexError
    else:
        if name == "GLOBAL" and arg is not None:
            module, _, attr = arg.partition(" ")
            if module and attr and denied(module, attr):
                raise ValueError("denied global: the pre-scan refuses it")
        elif name == "STACK_GLOBAL" and len(stack) >= 2:
            module, attr = strings.get(stack[-2], ""), strings.get(stack[-1], "")
            if module and attr and denied(module, attr):
                raise ValueError("denied global: the pre-scan refuses it")
        simulate(effect, stack, marks, depths)
        if string and arg is not None:
            strings[stack[-1]] = arg
    return pos


def _global(data: bytes, pos: int) -> tuple[str, int]:
    """GLOBAL's two lines as pickletools reads them ("module name"); ValueError for anything but plain
    ASCII without escapes, which the full pre-scan reads."""
    first = data.index(b"\n", pos)
    second = data.index(b"\n", first + 1)
    raw = data[pos:second]
    if b"\\" in raw or not raw.isascii():
        raise ValueError("a global the full pre-scan reads")
    return f"{data[pos:first].decode('ascii')} {data[first + 1 : second].decode('ascii')}", second + 1

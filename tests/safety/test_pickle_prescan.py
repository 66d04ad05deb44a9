"""The fast opcode walk of the pickle pre-scan (convert.pickle_scan.clean): it passes the pickles real
checkpoints are, hands every pickle the pre-scan refuses back to the full pre-scan (so each refusal
keeps its class and its message), and never passes one the full pre-scan would refuse."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import pytest
import torch

from convert.errors import ConvertError, CorruptInputError, UnsafeInputError, UnsupportedFormatError
from convert.pickle_reader import _prescan, restricted_load
from convert.pickle_scan import MAX_NESTING, clean
from tests.support import REPO

HOSTILE = REPO / "fixtures" / "hostile"
PROTO2 = b"\x80\x02"


def full_prescan_error(data: bytes) -> ConvertError | None:
    """What the pickletools walk alone says about `data` (the walk `clean` hands its doubts to)."""
    try:
        _prescan(io.BytesIO(data), "pickle")
    except ConvertError as exc:
        return exc
    return None


def data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))


def nested_tuples(depth: int) -> bytes:
    return PROTO2 + b")" + b"\x85" * depth + b"."


def nested_through_memo(depth: int) -> bytes:
    """Dicts filled in place, each holding the one before, fetched from the memo: depth grows by SETITEM."""
    body = b"}q\x00"  # EMPTY_DICT, BINPUT 0
    for i in range(depth):  # EMPTY_DICT, BINPUT i+1, BININT1 0, BINGET i, SETITEM
        body += b"}q" + bytes([i + 1]) + b"K\x00h" + bytes([i]) + b"s"
    return PROTO2 + body + b"."


REFUSED = {
    "denied GLOBAL": (PROTO2 + b"cos\nsystem\n)R.", UnsafeInputError),
    "denied STACK_GLOBAL": (b"\x80\x04\x8c\x02os\x8c\x06system\x93)R.", UnsafeInputError),
    "denied GLOBAL after a harmless one": (PROTO2 + b"ccollections\nOrderedDict\n0cbuiltins\neval\n.", UnsafeInputError),
    "memo index far ahead": (PROTO2 + b"Nr" + struct.pack("<I", 2**31) + b".", CorruptInputError),
    "tuples nested too deep": (nested_tuples(MAX_NESTING + 5), CorruptInputError),
    "dict nested too deep through the memo": (nested_through_memo(MAX_NESTING + 5), CorruptInputError),
    "out-of-band buffer": (b"\x80\x05\x97.", UnsupportedFormatError),
    "truncated": (PROTO2 + b"X\x10\x00\x00\x00abc", CorruptInputError),
    "unknown opcode": (PROTO2 + b"\xff.", CorruptInputError),
    "no STOP": (PROTO2 + b"N", CorruptInputError),
    "BINSTRING of negative length": (PROTO2 + b"T\xff\xff\xff\xff.", CorruptInputError),
    "BINUNICODE not utf-8": (PROTO2 + b"X\x02\x00\x00\x00\xff\xfe.", CorruptInputError),
    "BYTEARRAY8 longer than the pickle": (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".", CorruptInputError),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_refusal_is_still_the_full_prescans(case: str) -> None:
    """The fast walk does not pass it; restricted_load refuses it with the full pre-scan's own error."""
    data, error = REFUSED[case]
    assert not clean(data)
    expected = full_prescan_error(data)
    assert isinstance(expected, error), expected
    with pytest.raises(error) as caught:
        restricted_load(data, records=True)
    assert str(caught.value) == str(expected)


def test_nesting_just_within_the_limit_passes() -> None:
    for data in (nested_tuples(MAX_NESTING - 1), nested_through_memo(MAX_NESTING - 2)):
        assert clean(data) and full_prescan_error(data) is None


def test_real_checkpoints_take_the_fast_walk() -> None:
    """torch's own pickles of state dicts, modules and optimizer states; Python's of every protocol
    from 2 on (0 and 1 write text arguments: the full pre-scan reads those)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    objs = [model.state_dict(), model, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}]
    plain = {"a": [1, 2.5, "x", b"y", (1,), {1, 2}, frozenset([3]), bytearray(b"z"), None, True, 2**100, "\udc80"]}
    pickles = [data_pkl(o) for o in objs] + [pickle.dumps(plain, protocol=p) for p in range(2, 6)]
    for data in pickles:
        assert clean(data)
        assert full_prescan_error(data) is None
    assert not clean(pickle.dumps(plain, protocol=0))


def test_the_hostile_corpus_pickles_are_never_passed_when_refused() -> None:
    """Every raw pickle of the hostile corpus and every pickle inside its torch zip files: where the
    fast walk passes one, the full pre-scan has nothing to say either."""
    pickles = [p.read_bytes() for p in sorted(HOSTILE.glob("raw_*.pkl"))]
    for path in sorted(HOSTILE.glob("zip_*")):
        try:
            with zipfile.ZipFile(path) as zf:
                pickles += [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
            continue  # a corpus file whose zip is itself the attack
    assert len(pickles) > 20
    for data in pickles:
        if clean(data):
            assert full_prescan_error(data) is None

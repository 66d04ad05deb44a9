"""NumPy: .npy (magic, header dict literal, data or a pickle), .npz (a zip of .npy), plain pickles."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence

from hostile_corpus.common import CANARY_SOURCE, NUMEL, SIZE, WEIGHT_BYTES, Hostile
from hostile_corpus.h5_files import stored_zip
from hostile_corpus.pickles import NO_CANARY, OS_SYSTEM, Emit, Pickle, Value, build, call, dump, glob, recall, shared_list_bomb

NPY_MAGIC = b"\x93NUMPY"
# A shape whose element count, 4 * 2**64 + 6, wraps to 6 in int64 (and in int32 C arithmetic to 6 too):
# every dimension is a positive int32, so a reader that multiplies them in fixed width sees 24 bytes.
WRAP_SHAPE = (70, 88801, 11239, 1056175639)


def npy_header(descr: str, shape: tuple[int, ...], version: int = 1, length: int | None = None, extra: str = "") -> bytes:
    """Magic, version, header length, and the header dict literal (with `extra` keys) padded to 64
    bytes as np.save pads it."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, {extra}}}".encode("latin1")
    fixed = 10 if version == 1 else 12
    text += b" " * (-(fixed + len(text) + 1) % 64) + b"\n"
    size = len(text) if length is None else length
    return NPY_MAGIC + bytes([version, 0]) + struct.pack("<H" if version == 1 else "<I", size) + text


def np_dtype(name: str) -> Emit:
    """``numpy.dtype(name, False, True)`` and BUILD of its state, as pickle writes a dtype."""
    order = "|" if name.startswith(("O", "b", "u1", "i1")) else "<"
    flags = 63 if name.startswith("O") else 0
    return build(call(glob("numpy", "dtype"), name, False, True), (3, order, None, None, None, -1, -1, flags))


def np_array(shape: Value, dtype: Value, data: Value) -> Emit:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` then BUILD (1, shape, dtype, False, data):
    the pickle of an ndarray. An object array's data is the list of its items."""
    empty = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), (0,), b"b")
    return build(empty, (1, shape, dtype, False, data))


def weight_array() -> Emit:
    return np_array(SIZE, np_dtype("f4"), WEIGHT_BYTES)


def pylist(items: Sequence[Value]) -> Emit:
    def emit(p: Pickle) -> None:
        p.op(pickle.MARK)
        for item in items:
            p.push(item)
        p.op(pickle.LIST)

    return emit


def objects(*items: Value) -> Emit:
    """A 0-d object array (one item) or a 1-d one: what np.save pickles for dtype=object."""
    return np_array(() if len(items) == 1 else (len(items),), np_dtype("O8"), pylist(items))


def self_containing(p: Pickle) -> None:
    """An object array whose one item is the array itself (memo slot 0): numpy builds it, and a reader that
    walks into the items of object arrays never comes back."""
    p.push(call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), (0,), b"b"))
    p.op(pickle.BINPUT, b"\x00")
    p.push((1, (1,), np_dtype("O8"), False, pylist([recall(0)]))).op(pickle.BUILD)


def npy_objects(root: Value) -> bytes:
    """A .npy of dtype object: the header, then the pickle np.save writes (protocol 3)."""
    return npy_header("|O", ()) + dump(root, 3)


def numpy_files() -> list[Hostile]:
    weight_npy = npy_header("<f4", SIZE) + WEIGHT_BYTES
    exec_canary = call(glob("builtins", "exec"), CANARY_SOURCE)
    return [
        Hostile(
            "npy_object_os_system.npy",
            "npy",
            "dtype object: the pickle np.load(allow_pickle=True) runs holds os.system('touch canary')",
            True,
            npy_objects(objects(OS_SYSTEM)),
        ),
        Hostile(
            "npy_object_dict_gadget.npy",
            "npy",
            "a saved dict (0-d object array) of a real array and builtins.exec of source that creates canary",
            True,
            npy_objects(objects({"weight": weight_array(), "extra": exec_canary})),
        ),
        Hostile(
            "npy_object_cycle.npy",
            "npy",
            "dtype object: an array whose one item is itself" + NO_CANARY,
            False,
            npy_objects(self_containing),
        ),
        Hostile(
            "npy_shared_list_bomb.npy",
            "npy",
            "a saved dict of a real array and [x, x] nested 40 deep through the memo: 2**40 paths" + NO_CANARY,
            False,
            npy_objects(objects({"weight": weight_array(), "extra": lambda p: shared_list_bomb(p, 40)})),
        ),
        Hostile(
            "npy_shape_wraps_int64.npy",
            "npy",
            f"float32 shape {list(WRAP_SHAPE)}: 4 * 2**64 + 6 elements, 6 in int64, over 24 bytes" + NO_CANARY,
            False,
            npy_header("<f4", WRAP_SHAPE) + WEIGHT_BYTES,
        ),
        Hostile(
            "npy_shape_past_int64.npy",
            "npy",
            "shape (2**64 + 6,): a dimension no int64 holds" + NO_CANARY,
            False,
            npy_header("<f4", (2**64 + NUMEL,)) + WEIGHT_BYTES,
        ),
        Hostile(
            "npy_header_length_4gib.npy",
            "npy",
            "version 2 header length 2**32 - 1 in a file of a hundred bytes" + NO_CANARY,
            False,
            npy_header("<f4", SIZE, version=2, length=2**32 - 1) + WEIGHT_BYTES,
        ),
        Hostile(
            "npy_extra_header_key.npy",
            "npy",
            "a header with a fourth key, 'scale': 0.5, which numpy refuses (its meaning would be lost)" + NO_CANARY,
            False,
            npy_header("<f4", SIZE, extra="'scale': 0.5, ") + WEIGHT_BYTES,
        ),
        Hostile(
            "npz_object_member.npz",
            "npz",
            "a real float32 member, then an object-array member whose pickle is os.system('touch canary')",
            True,
            stored_zip([("weight.npy", weight_npy), ("extra.npy", npy_objects(objects(OS_SYSTEM)))]),
        ),
        Hostile(
            "np_dict_gadget.pkl",
            "numpy-pickle",
            "a dict of a real array (numpy.core.multiarray._reconstruct) and os.system('touch canary')",
            True,
            dump({"weight": weight_array(), "extra": OS_SYSTEM}, 3),
        ),
        Hostile(
            "np_object_items_gadget.pkl",
            "numpy-pickle",
            "an object array whose items are a real array and builtins.exec of source that creates canary",
            True,
            dump({"params": objects(weight_array(), exec_canary)}, 3),
        ),
        Hostile(
            "np_object_cycle.pkl",
            "numpy-pickle",
            "a dict holding an object array whose one item is the array itself" + NO_CANARY,
            False,
            dump({"params": self_containing}, 3),
        ),
        Hostile(
            "np_shared_list_bomb.pkl",
            "numpy-pickle",
            "a dict of a real array and [x, x] nested 40 deep through the memo: 2**40 paths for a tree walk" + NO_CANARY,
            False,
            dump({"weight": weight_array(), "extra": lambda p: shared_list_bomb(p, 40)}, 3),
        ),
        Hostile(
            "np_dtype_not_dtype.pkl",
            "numpy-pickle",
            "allow-listed _reconstruct whose BUILD state gives the string 'f4' where a numpy.dtype belongs" + NO_CANARY,
            False,
            dump({"weight": np_array(SIZE, "f4", WEIGHT_BYTES)}, 3),
        ),
        Hostile(
            "np_shape_past_intp.pkl",
            "numpy-pickle",
            "allow-listed _reconstruct of shape (2**63, 0) over no bytes: the count is 0, a dimension past intp" + NO_CANARY,
            False,
            dump({"weight": np_array((2**63, 0), np_dtype("f4"), b"")}, 3),
        ),
        Hostile(
            "np_shape_wraps_int64.pkl",
            "numpy-pickle",
            f"allow-listed _reconstruct of float32 shape {list(WRAP_SHAPE)} (6 elements in int64) over 24 bytes" + NO_CANARY,
            False,
            dump({"weight": np_array(WRAP_SHAPE, np_dtype("f4"), WEIGHT_BYTES)}, 3),
        ),
        Hostile(
            "np_reconstruct_not_ndarray.pkl",
            "numpy-pickle",
            "numpy.core.multiarray._reconstruct of builtins.object instead of numpy.ndarray" + NO_CANARY,
            False,
            dump({"weight": call(glob("numpy.core.multiarray", "_reconstruct"), glob("builtins", "object"), (0,), b"b")}, 3),
        ),
    ]

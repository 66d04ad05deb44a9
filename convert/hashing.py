"""Digests (BLAKE3 by default, SHA-256 by option) of file ranges without holding them in memory, and the
output hasher the writer runs beside it.

BLAKE3 is what a Rust loader checks with the `blake3` crate, at several times SHA-256's speed;
SHA-256 stays for those who compare with the Hub's LFS ids. Ranges are hashed through short-lived
memory-map windows: the bytes come from the page cache without a copy, and unmapping each window
returns its pages, so RSS stays flat however large the file.
Both libraries release the GIL, so hashing threads run beside the writer's kernel-side copies.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import blake3

from .errors import UsageError

if TYPE_CHECKING:  # the CLI imports this module at start-up, before numpy is needed
    from .tensors import FileSpan

WINDOW = 4 << 20
SMALL_RANGE = 64 << 10  # read rather than mapped by hash_range
ALGORITHMS = ("blake3", "sha256")
DEFAULT_ALGORITHM = "blake3"


class Hasher(Protocol):
    """What `hash_range` feeds: a digest, or the zip reader's CRC-32."""

    def update(self, data: bytes | memoryview, /) -> object: ...


class Digest(Hasher, Protocol):
    """What blake3's and hashlib's hashers share, and all this module asks of them."""

    def hexdigest(self) -> str: ...


def new_digest(algorithm: str) -> Digest:
    """A fresh hasher (update/hexdigest) of the named algorithm."""
    if algorithm == "blake3":
        return blake3.blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise UsageError(f"unknown digest {algorithm!r} (choose from {', '.join(ALGORITHMS)})")


@contextmanager
def mapped(fd: int, offset: int, length: int) -> Iterator[memoryview]:
    """Bytes [offset, offset+length) of an open file as a short-lived read-only mapping (length > 0)."""
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, offset + length - base, access=mmap.ACCESS_READ, offset=base) as window:
        view = memoryview(window)
        piece = view[offset - base :]
        try:
            yield piece
        finally:
            piece.release()
            view.release()


def hash_range(fd: int, offset: int, length: int, hashers: Iterable[Hasher]) -> None:
    """Feed bytes [offset, offset+length) of an open file to every hasher; a small range is read in
    one pread (mapping it costs more than the read: 20,000 small tensors, 40,000 mappings)."""
    hashers = list(hashers)
    if length <= SMALL_RANGE:
        data = os.pread(fd, length, offset)
        if len(data) == length:  # else the mapping below fails as it does for any range past the end
            for h in hashers:
                h.update(data)
            return
    end = offset + length
    for pos in range(offset, end, WINDOW):
        with mapped(fd, pos, min(WINDOW, end - pos)) as piece:
            for h in hashers:
                h.update(piece)


def same_ranges(a: Sequence[FileSpan], b: Sequence[FileSpan], opened: dict[str, int] | None = None) -> bool:
    """Whether two runs of file ranges hold the same bytes, each run read as its ranges one after
    another: a fraction of a digest's cost (about a third of BLAKE3's CPU here), for `verify` to prove
    an output tensor equal to the source range (or ranges) it was copied from. `opened`: files the
    caller keeps open across calls (path -> descriptor; it closes them), else opened here."""
    total = sum(s.length for s in a)
    if total != sum(s.length for s in b):
        return False
    if [(s.offset, s.length) for s in a] == [(s.offset, s.length) for s in b] and [os.path.realpath(s.path) for s in a] == [
        os.path.realpath(s.path) for s in b
    ]:
        return True
    fds: dict[str, int] = {} if opened is None else opened

    def fd(path: str) -> int:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY)
        return fds[path]

    try:
        if total <= SMALL_RANGE:  # read, not mapped (as hash_range); a range past the end is left to the mapping
            left, right = (b"".join(os.pread(fd(s.path), s.length, s.offset) for s in run) for run in (a, b))
            if len(left) == len(right) == total:
                return left == right
        i = j = done_a = done_b = 0
        while i < len(a) and j < len(b):
            x, y = a[i], b[j]
            n = min(WINDOW, x.length - done_a, y.length - done_b)
            if n:
                with mapped(fd(x.path), x.offset + done_a, n) as p, mapped(fd(y.path), y.offset + done_b, n) as q:
                    if not _equal(p, q):
                        return False
                done_a, done_b = done_a + n, done_b + n
            if done_a == x.length:
                i, done_a = i + 1, 0
            if done_b == y.length:
                j, done_b = j + 1, 0
        return True
    finally:
        if opened is None:
            for own in fds.values():
                os.close(own)


def _equal(x: memoryview, y: memoryview) -> bool:
    # numpy compares in vector registers, eight bytes a lane (memoryview's own == unpacks byte by byte,
    # 20x slower). The arrays die on return, before the caller releases the views they borrow.
    import numpy as np

    words = len(x) // 8
    return bool(
        np.array_equal(np.frombuffer(x, np.uint64, words), np.frombuffer(y, np.uint64, words))
        and x[words * 8 :] == y[words * 8 :]
    )


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    digest = new_digest(algorithm)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size:
            hash_range(fd, 0, size, [digest])
    finally:
        os.close(fd)
    return digest.hexdigest()


def file_and_range_digests(path: str | os.PathLike[str], ranges: list[tuple[int, int]], algorithm: str) -> tuple[str, list[str]]:
    """A complete file's digest and each of its ranges' (in file order), on two threads side by side."""
    hasher = OutputHasher(path, os.path.getsize(path), ranges, algorithm)
    return hasher.finish()


class OutputHasher:
    """Digests of an output file and of each tensor in it, computed while the file is written.

    The writer reports how far the file is complete (`advance`); the bytes written so far are read back
    from the page cache (so the writer may fill a tensor in any order, tiles of a transposed view, and
    copy ranges in the kernel) and hashed. When the tensors' ranges lie in file order without overlap
    within the file, as every file this tool writes has them, one thread reads each window once and
    feeds it to the file's digest and to the digests of the tensors it holds: the second read of every
    byte cost 0.1 CPU-seconds per GiB here. Other ranges (a manifest `verify` reads may claim any) get a
    thread of their own, each range read again. `verify` runs the same over a finished file.
    """

    def __init__(self, path: str | os.PathLike[str], size: int, tensor_ranges: list[tuple[int, int]], algorithm: str) -> None:
        self._path = path
        self._algorithm = algorithm
        self._size = size
        self._ranges = tensor_ranges
        self._done = 0
        self._stopped = False
        self._cond = threading.Condition()
        self._errors: list[BaseException] = []
        self.file_digest = ""
        self.tensor_digests: list[str] = []
        begins = [b for b, _ in tensor_ranges[1:]] + [size] if tensor_ranges else []
        in_order = all(0 <= b <= e <= n <= size for (b, e), n in zip(tensor_ranges, begins, strict=True))
        work = (self._hash_file,) if in_order else (self._hash_file, self._hash_tensors)
        self._tensors_with_file = in_order
        self._threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True) for fn in work]
        for t in self._threads:
            t.start()

    def advance(self, upto: int) -> None:
        """Bytes [0, upto) of the file are written."""
        with self._cond:
            self._done = max(self._done, upto)
            self._cond.notify_all()
        if self._errors:
            raise self._errors[0]

    def finish(self) -> tuple[str, list[str]]:
        self.advance(self._size)
        for t in self._threads:
            t.join()
        if self._errors:
            raise self._errors[0]
        return self.file_digest, self.tensor_digests

    def abort(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _wait_for(self, upto: int) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self._done >= upto or self._stopped)
            return not self._stopped

    def _guard(self, fn: Any) -> None:
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError as exc:
            self._errors.append(exc)
            return
        try:
            fn(fd)
        except BaseException as exc:  # surfaced to the writer on its next call
            self._errors.append(exc)
        finally:
            os.close(fd)

    def _hash_file(self, fd: int) -> None:
        """The file's digest, window by window as it lands; with `_tensors_with_file`, the tensors' too."""
        digest = new_digest(self._algorithm)
        tensors = _RangesInOrder(self._ranges, self._algorithm) if self._tensors_with_file else None
        pos = 0
        while pos < self._size:
            with self._cond:
                # the predicate runs inside this wait, while `pos` is this iteration's
                self._cond.wait_for(lambda: self._done > pos or self._stopped)  # noqa: B023
                if self._stopped:
                    return
                end = min(self._done, pos + WINDOW)
            hash_range(fd, pos, end - pos, [digest] if tensors is None else [digest, tensors.at(pos)])
            pos = end
        self.file_digest = digest.hexdigest()
        if tensors is not None:
            self.tensor_digests = tensors.finish()

    def _hash_tensors(self, fd: int) -> None:
        for begin, end in self._ranges:
            if not self._wait_for(end):
                return
            digest = new_digest(self._algorithm)
            hash_range(fd, begin, end - begin, [digest])
            self.tensor_digests.append(digest.hexdigest())


class _RangesInOrder:
    """The digests of ranges in file order without overlap, fed the file's bytes in order (as a
    `Hasher`: `at(offset)` says where the next bytes start); bytes between ranges are skipped."""

    def __init__(self, ranges: list[tuple[int, int]], algorithm: str) -> None:
        self._ranges = ranges
        self._digests = [new_digest(algorithm) for _ in ranges]
        self._next = 0  # the first range not yet complete
        self._pos = 0

    def at(self, offset: int) -> _RangesInOrder:
        self._pos = offset
        return self

    def update(self, data: bytes | memoryview, /) -> None:
        start, end = self._pos, self._pos + len(data)
        view = memoryview(data)
        i = self._next
        while i < len(self._ranges) and self._ranges[i][0] < end:
            begin, stop = self._ranges[i]
            if stop > start:
                self._digests[i].update(view[max(begin, start) - start : min(stop, end) - start])
            if stop > end:
                break
            i += 1
        self._next = i
        self._pos = end

    def finish(self) -> list[str]:
        return [d.hexdigest() for d in self._digests]

"""SHA-256 of file ranges without holding them in memory, and a background hasher for the writer.

Ranges are hashed through short-lived memory-map windows: the bytes come from the page cache
without a copy, and unmapping each window returns its pages, so RSS stays flat however large the
file.  hashlib releases the GIL, so hashing in a thread overlaps the writer's I/O.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Iterable
from typing import Any

WINDOW = 32 << 20


def hash_range(fd: int, offset: int, length: int, hashers: Iterable[Any]) -> None:
    """Feed bytes [offset, offset+length) of an open file to every hasher."""
    hashers = list(hashers)
    gran = mmap.ALLOCATIONGRANULARITY
    end = offset + length
    pos = offset
    while pos < end:
        base = pos - pos % gran
        size = min(end, base + WINDOW) - base
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ, offset=base) as window:
            view = memoryview(window)
            try:
                piece = view[pos - base:size]
                for h in hashers:
                    h.update(piece)
            finally:
                piece.release()
                view.release()
        pos = base + size


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size:
            hash_range(fd, 0, size, [digest])
    finally:
        os.close(fd)
    return digest.hexdigest()


class StreamHasher:
    """Hashes an output file and each tensor in it, in a background thread, in write order.

    The writer posts the bytes it writes (or, for a kernel-side copy, where to read them from); the
    queue is bounded so at most a few chunks wait in memory.
    """

    def __init__(self, depth: int = 3) -> None:
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self.file = hashlib.sha256()
        self.tensor_digests: list[str] = []
        self._current: Any = None
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="stream-hasher", daemon=True)
        self._thread.start()

    def bytes(self, data: Any) -> None:
        """Bytes outside any tensor (the header)."""
        self._put("bytes", data)

    def begin_tensor(self) -> None:
        self._put("begin", None)

    def tensor_bytes(self, data: Any) -> None:
        self._put("data", data)

    def tensor_range(self, path: str, offset: int, length: int) -> None:
        self._put("range", (path, offset, length))

    def end_tensor(self) -> None:
        self._put("end", None)

    def finish(self) -> tuple[str, list[str]]:
        self._put("stop", None)
        self._thread.join()
        self._raise()
        return self.file.hexdigest(), self.tensor_digests

    def abort(self) -> None:
        """Stop after the queued jobs, skipping their work; used when the write failed."""
        self._aborted = True
        self._jobs.put(("stop", None))
        self._thread.join()

    def _put(self, kind: str, payload: Any) -> None:
        self._raise()
        self._jobs.put((kind, payload))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            kind, payload = self._jobs.get()
            if kind == "stop":
                return
            if self._error is not None or self._aborted:
                continue
            try:
                self._handle(kind, payload)
            except BaseException as exc:  # surfaced to the writer on its next call
                self._error = exc

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "bytes":
            self.file.update(payload)
        elif kind == "begin":
            self._current = hashlib.sha256()
        elif kind == "data":
            self.file.update(payload)
            self._current.update(payload)
        elif kind == "range":
            path, offset, length = payload
            fd = os.open(path, os.O_RDONLY)
            try:
                hash_range(fd, offset, length, (self.file, self._current))
            finally:
                os.close(fd)
        elif kind == "end":
            self.tensor_digests.append(self._current.hexdigest())

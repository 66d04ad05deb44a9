"""Atomic output folders: everything is written into a hidden staging folder beside the
destination, fsynced, and renamed into place only when complete.

On any error, Ctrl-C or SIGTERM the staging folder is removed; an existing output is left as it
was unless `overwrite` is set, and even then it is swapped out only after the new one is complete.
A process killed with SIGKILL can leave a staging folder (`.NAME.convert-*`), never a partial
destination; its name records the machine, process id and start time of its owner, so the next run
into the same destination recognizes it as a dead run's and removes it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from .bundle_index import BUNDLE_INDEX, read_bundle_index
from .errors import OutputExistsError, OutputWriteError, UnsafeInputError

STAGING_MARK = ".convert-"


class StagedOutput:
    def __init__(self, dest: str | Path, overwrite: bool = False) -> None:
        self.dest = Path(dest).absolute()
        self.overwrite = overwrite
        self.staging: Path | None = None
        self.removed: list[str] = []  # stale staging folders of killed runs, removed on entry

    def check(self) -> None:
        """Refuse early, before any work, when the destination already holds something: an earlier
        output of this tool is replaced only with `overwrite`, anything else never."""
        if self.dest.exists():
            if not self.dest.is_dir():
                raise OutputExistsError(f"{self.dest} exists and is not a folder")
            if not any(self.dest.iterdir()):
                return
            foreign = foreign_entries(self.dest)
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise OutputExistsError(
                    f"{self.dest} holds files this tool did not write ({shown}); choose another output folder, or move them away"
                )
            if not self.overwrite:
                raise OutputExistsError(
                    f"{self.dest} already holds an earlier output; replace it with --overwrite (overwrite=True in the Python API)"
                )

    def __enter__(self) -> Path:
        self.check()
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.removed = self._remove_stale()
            while True:  # named before it exists, so an interrupt at any point still knows what to remove
                name = f".{self.dest.name}{STAGING_MARK}{_owner_tag(os.getpid())}.{os.urandom(4).hex()}"
                self.staging = self.dest.parent / name
                try:
                    self.staging.mkdir(mode=0o777)  # the umask applies, as it does to the output's files
                    break
                except FileExistsError:
                    continue
        except BaseException as exc:  # Ctrl-C or SIGTERM too: a staging folder is never orphaned
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise OutputWriteError(f"cannot create output beside {self.dest}: {exc.strerror or exc}") from None
            raise
        return self.staging

    def _remove_stale(self) -> list[str]:
        """Staging folders for this destination whose owner (this machine, by process id and start
        time) is gone: a run killed with SIGKILL. Folders of live runs and of other machines stay."""
        prefix = f".{self.dest.name}{STAGING_MARK}"
        removed = []
        for path in self.dest.parent.glob(glob.escape(prefix) + "*"):
            owner = path.name[len(prefix) :].split(".")
            if len(owner) < 4 or owner[0] != _host_tag() or not owner[1].isdigit() or not path.is_dir():
                continue
            if _owner_tag(int(owner[1])) == ".".join(owner[:3]):
                continue  # that process is still running
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self.staging is not None
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        try:
            self._commit()
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise

    def _commit(self) -> None:
        assert self.staging is not None
        fsync_path(self.staging)
        old: Path | None = None
        if self.dest.exists() and any(self.dest.iterdir()):
            self.check()
            try:
                swapped = _exchange(self.staging, self.dest)
            except OSError as exc:
                raise OutputWriteError(f"cannot move the output into {self.dest}: {exc.strerror or exc}") from None
            if swapped:  # one atomic step: the new output is in place, the staging path holds the old one
                shutil.rmtree(self.staging, ignore_errors=True)
                fsync_path(self.dest.parent)
                return
            # No atomic swap here: move the old output aside, then the new one in (a kill between the
            # two renames leaves the old output in .NAME.old-*/previous and no destination).
            old = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.old-", dir=self.dest.parent))
            os.rename(self.dest, old / "previous")
        elif self.dest.exists():
            self.dest.rmdir()
        try:
            os.rename(self.staging, self.dest)
        except OSError as exc:
            if old is not None:
                os.rename(old / "previous", self.dest)
            raise OutputWriteError(f"cannot move the output into {self.dest}: {exc.strerror or exc}") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        fsync_path(self.dest.parent)


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def _owner_tag(pid: int) -> str:
    """host.pid.start of a live process (its start time in clock ticks from /proc, where there is
    one, so a reused pid is not taken for the owner); `host.pid.gone` when it has ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            started = fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except FileNotFoundError:
        started = "gone"
    except (OSError, IndexError):  # no /proc: the pid alone
        try:
            os.kill(pid, 0)
            started = "0"
        except ProcessLookupError:
            started = "gone"
        except PermissionError:
            started = "0"
    return f"{_host_tag()}.{pid}.{started}"


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` is not part of an earlier output of this tool, as paths relative to it.

    An output is identified by its manifest (manifest.json, this tool named as its generator) and
    holds only what that manifest lists; a NeuralForecast output by models.json and its model
    folders; a folder of several graphs (to-onnx of a NeuralForecast save) by its outputs alone."""
    from . import manifest as manifest_mod

    names = sorted(p.name for p in folder.iterdir())
    doc = _json_object(folder / manifest_mod.MANIFEST_FILE)
    if doc is not None and isinstance(doc.get("generator"), dict) and doc["generator"].get("name") == manifest_mod.GENERATOR:
        return [n for n in names if n not in _manifest_names(doc)]
    try:
        index = read_bundle_index(folder)
    except UnsafeInputError:  # a models.json naming folders outside: not one this tool wrote
        index = None
    if index is not None:
        listed = set(index.folders) & set(names)
        return [n for n in names if n != BUNDLE_INDEX and n not in listed] + _inside(folder, sorted(listed))
    if doc is None and names and all((folder / n / manifest_mod.MANIFEST_FILE).is_file() for n in names):
        return _inside(folder, names)
    return names


def _inside(folder: Path, outputs: list[str]) -> list[str]:
    """Foreign entries of the output folders `outputs` inside `folder` (a file there is foreign)."""
    found: list[str] = []
    for name in outputs:
        if (folder / name).is_dir():
            found.extend(f"{name}/{f}" for f in foreign_entries(folder / name))
        else:
            found.append(name)
    return found


def _manifest_names(doc: dict[str, Any]) -> set[str]:
    """The names an output's manifest accounts for: its files, index (and the layout's extra
    indexes), sidecars, itself, and the files a companion output's records name under `file` (each
    entry of a top-level list, as ruv-FANN's `networks`)."""
    from . import manifest as manifest_mod
    from .errors import ConvertError
    from .mapping import load_layout

    files = [f.get("path") for f in doc.get("files", []) if isinstance(f, dict)]
    records = [e.get("file") for v in doc.values() if isinstance(v, list) for e in v if isinstance(e, dict)]
    names = {manifest_mod.MANIFEST_FILE, *files, *records, *doc.get("sidecars", [])}
    if doc.get("index"):
        names.add(doc["index"])
        try:
            names.update(load_layout(doc.get("target", {}).get("layout", "")).extra_index_names)
        except ConvertError:  # a user's layout: only its main index is known
            pass
    return {n for n in names if isinstance(n, str)}


def _json_object(path: Path) -> dict[str, Any] | None:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where
    the C library, kernel or file system has no such call."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (a file written by another library, say)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write a small file inside a staging folder, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides, as for any file
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path.name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)

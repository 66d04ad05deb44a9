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
import socket
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from .errors import OutputExistsError, OutputWriteError

STAGING_MARK = ".convert-"


class StagedOutput:
    def __init__(self, dest: str | Path, overwrite: bool = False) -> None:
        self.dest = Path(dest).absolute()
        self.overwrite = overwrite
        self.staging: Path | None = None
        self.removed: list[str] = []  # stale staging folders of killed runs, removed on entry

    def check(self) -> None:
        """Refuse early, before any work, when the destination already holds something."""
        if self.dest.exists():
            if not self.dest.is_dir():
                raise OutputExistsError(f"{self.dest} exists and is not a folder")
            if any(self.dest.iterdir()) and not self.overwrite:
                raise OutputExistsError(f"{self.dest} already holds files; pass --overwrite to replace them")

    def __enter__(self) -> Path:
        self.check()
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.removed = self._remove_stale()
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}{STAGING_MARK}{_owner_tag(os.getpid())}.",
                                                 dir=self.dest.parent))
        except OSError as exc:
            raise OutputWriteError(f"cannot create output beside {self.dest}: {exc.strerror or exc}") from None
        return self.staging

    def _remove_stale(self) -> list[str]:
        """Staging folders for this destination whose owner (this machine, by process id and start
        time) is gone: a run killed with SIGKILL. Folders of live runs and of other machines stay."""
        prefix = f".{self.dest.name}{STAGING_MARK}"
        removed = []
        for path in self.dest.parent.glob(glob.escape(prefix) + "*"):
            owner = path.name[len(prefix):].split(".")
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path.name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)

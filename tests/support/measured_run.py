"""Running the CLI on a hostile input in a child process, and measuring what it cost.

The child reports its own high-water RSS (VmHWM) at exit: ru_maxrss of a child is useless here, as
Linux keeps the parent's peak across fork+exec. An address-space cap stops a runaway allocation from
hurting the machine; a watchdog ends a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import assert_no_output, assert_one_line_error

PEAK_RSS_LIMIT = 1 << 30  # the bound for every hostile file of a few MB
ADDRESS_SPACE = 4 << 30
WATCHDOG_SECONDS = 120

_CHILD = """
import atexit, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
def _report():
    with open('/proc/self/status') as fh:
        hwm = [l.split()[1] for l in fh if l.startswith('VmHWM:')][0]
    os.write(int(os.environ['RMC_RSS_FD']), hwm.encode())
atexit.register(_report)
sys.argv = ['convert', *sys.argv[1:]]
from convert.cli import main
main()
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes; 0 when the child died before reporting (a signal)


def run_measured(*args: Any, cwd: str | Path, env: dict[str, str] | None = None) -> Run:
    """`convert ARGS...` in a child with an address-space cap; its exit code, output and peak RSS."""
    read_fd, write_fd = os.pipe()
    child_env = {**os.environ, "NO_COLOR": "1", "RMC_RSS_FD": str(write_fd), **(env or {})}
    child_env.pop("COLUMNS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD.format(cap=ADDRESS_SPACE), *map(str, args)],
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=WATCHDOG_SECONDS,
            env=child_env,
            pass_fds=(write_fd,),
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        reported = fh.read()
    return Run(proc.returncode, proc.stdout, proc.stderr, int(reported or 0) * 1024)


def refused(code: int, *args: Any, cwd: Path, out: Path | None = None, needles: tuple[str, ...] = ()) -> Run:
    """Run `convert ARGS` and check the refusal: exit `code`, one line naming `needles`, nothing written."""
    run = run_measured(*args, cwd=cwd)
    assert run.code == code, f"exit {run.code}, expected {code}: {run.stderr[-2000:]}"
    assert_one_line_error(run.stderr, *needles)
    assert 0 < run.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {run.peak_rss >> 20} MiB"
    if out is not None:
        assert_no_output(out)
    assert not (cwd / "canary").exists()
    return run

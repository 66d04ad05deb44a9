"""Keep framework chatter off the terminal while exporting and validating; frameworks' errors in one line.

torch prints export progress to stdout, TensorFlow and ONNX Runtime log from C++ straight to file
descriptor 2, and every framework raises deprecation warnings.  The command's own contract is one
result on stdout (JSON with --json) and, on failure, one error line on stderr, so both descriptors
are pointed at a scratch file for the duration and restored afterwards.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def framework_output_captured() -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = (os.dup(1), os.dup(2))
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

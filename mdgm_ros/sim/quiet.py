"""Silence what C libraries print on import (pybullet writes its build-time banner to stderr)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def quiet_c_output() -> Iterator[None]:
    """File descriptors 1 and 2 point at /dev/null inside the block; Python's streams are flushed first.
    Python-level errors raised inside still propagate (their text is printed later, by the caller)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, ValueError):        # no usable descriptors (embedded, closed): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
            _flush_c_stdio()               # a buffered printf would otherwise surface after the block
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass

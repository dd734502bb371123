"""SIGTERM stops a long command the way Ctrl-C does.

A service manager, ``kill``, ``timeout`` or the end of a session sends SIGTERM, and a job started with
``&`` from a script ignores SIGINT (POSIX), so SIGTERM is often the only way to stop ``mdgm-ros train``
or ``bench zoo``. Without this it killed the process without the "run again with --resume" hint; with it
the command leaves through its Ctrl-C path (state saved atomically, the hint printed) and exits with 143.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; caught wherever KeyboardInterrupt is."""

    exit_code = 128 + signal.SIGTERM


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (the shell's 128 + signal number)."""
    return getattr(interrupt, "exit_code", 128 + signal.SIGINT)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """Within the block (main thread only; elsewhere a no-op), SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_SIGINT_SEEN = threading.Event()


def _raise_interrupt(signum, frame) -> None:
    _SIGINT_SEEN.set()
    raise KeyboardInterrupt()


def interrupted_inside_native(err: BaseException) -> bool:
    """Whether ``err`` is a Ctrl-C that arrived inside native code (rclpy's pybind11 layer turns the
    KeyboardInterrupt raised there into a RuntimeError): true once a SIGINT came while
    :func:`ctrl_c_seen` was active."""
    return isinstance(err, RuntimeError) and _SIGINT_SEEN.is_set()


@contextlib.contextmanager
def ctrl_c_seen() -> Iterator[None]:
    """Within the block (main thread only), Ctrl-C raises KeyboardInterrupt as usual and is remembered,
    for :func:`interrupted_inside_native`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGINT_SEEN.clear()
    previous = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

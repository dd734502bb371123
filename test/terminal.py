"""Run a command attached to a pseudo-terminal, as a user at a terminal would (progress bars on)."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Callable


def run_in_terminal(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600.0,
                    cols: int = 120, rows: int = 40,
                    interrupt_when: Callable[[str], bool] | None = None) -> tuple[int, str]:
    """(exit status, everything the terminal showed, carriage returns as new lines). ``interrupt_when``:
    Ctrl-C (SIGINT) once it is true of the screen so far, as a user stops a live view."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2 if interrupt_when else 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:              # EIO: the terminal closed with the process
                    data = b""
                if not data and proc.poll() is not None:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
            if interrupt_when is not None and interrupt_when(b"".join(chunks).decode("utf-8", "replace")):
                proc.send_signal(signal.SIGINT)
                interrupt_when = None
        else:
            proc.kill()
            raise TimeoutError(f"{args} ran past {timeout} s")
    finally:
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return proc.wait(timeout=30), text

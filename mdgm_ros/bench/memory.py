"""Resident memory of benchmark processes, from ``/proc`` (Linux).

VmHWM is the peak resident set of a process image: unlike ``ru_maxrss`` it does not inherit the
parent's peak across fork and exec, so a small training subprocess of a large benchmark process is
measured as itself."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


def status_mb(pid: int | str, key: str) -> float:
    """A ``/proc/<pid>/status`` memory line in MB (VmHWM: the peak resident set of this process image;
    unlike ru_maxrss it does not inherit the parent's peak across fork and exec). NaN if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def child_pids(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


class PeakMemory:
    """Peak resident memory of this process (VmHWM) and of its child processes (DataLoader workers:
    their VmHWM, polled every ``period`` s while the block runs), in MB."""

    def __init__(self, period: float = 0.25):
        self.period, self.children_mb = period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            for child in child_pids(os.getpid()):
                peak = status_mb(child, "VmHWM")
                if peak == peak:
                    self.children_mb = max(self.children_mb, round(peak, 1))

    def own_mb(self) -> float:
        return round(status_mb("self", "VmHWM"), 1)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

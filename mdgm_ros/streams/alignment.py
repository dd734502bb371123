"""Streams -> samples: stamped ring buffers, windows ending at an anchor stamp, staleness -> presence.

Used by the live fusion node and by the bag-to-dataset pipeline, so training sees what the robot sees.
No ROS imports: stamps are integer nanoseconds, payloads numpy arrays.

For each stream a bounded ring buffer keeps (stamp, array) in stamp order. A sample at anchor stamp t
takes, for every stream:

* a *point* stream (camera, joints, tactile): the newest entry with stamp <= t; it is present if
  t - stamp <= staleness;
* a *window* stream (audio PCM chunks, each stamped at its end): the last ``window_samples`` samples
  of consecutive chunks ending at or before t; present if the newest chunk is within staleness, the
  chunks reach back far enough and no gap between them exceeds ``max_gap``.

A stamp older than the stream's newest by more than ``reset_after`` (bag loop, simulator reset)
clears every buffer; a smaller step backwards is rejected as out of order.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import numpy as np

NS = 1_000_000_000


@dataclass(frozen=True)
class StreamConfig:
    name: str
    staleness_s: float = 0.1
    capacity: int = 256
    window_samples: int = 0          # > 0: a window stream of this many samples (audio)
    sample_rate: float = 0.0         # window streams: samples per second (for gap checks)
    max_gap_s: float = 0.05          # window streams: largest tolerated hole between chunks

    def __post_init__(self) -> None:
        if self.staleness_s <= 0 or self.capacity < 1:
            raise ValueError(f"stream {self.name!r}: staleness must be > 0 and capacity >= 1")
        if self.window_samples and self.sample_rate <= 0:
            raise ValueError(f"stream {self.name!r}: a window stream needs its sample_rate")


class PushResult:
    ACCEPTED = "accepted"
    RESET = "reset"
    OUT_OF_ORDER = "out_of_order"


@dataclass
class AlignedSample:
    stamp_ns: int
    arrays: dict[str, np.ndarray]              # present streams only
    present: dict[str, bool]
    age_s: dict[str, float]                    # nan when the stream has nothing at or before t

    def mask(self, names) -> list[bool]:
        return [self.present.get(n, False) for n in names]


@dataclass
class _Buffer:
    config: StreamConfig
    stamps: deque = field(default_factory=deque)
    arrays: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.stamps = deque(maxlen=self.config.capacity)
        self.arrays = deque(maxlen=self.config.capacity)

    @property
    def newest(self) -> int | None:
        return self.stamps[-1] if self.stamps else None

    def clear(self) -> None:
        self.stamps.clear()
        self.arrays.clear()

    def index_at_or_before(self, stamp_ns: int) -> int:
        """Index of the newest entry with stamp <= stamp_ns, or -1."""
        return bisect.bisect_right(self.stamps, stamp_ns) - 1


class Aligner:
    def __init__(self, streams: list[StreamConfig], reset_after_s: float = 1.0):
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique: {names}")
        self.buffers = {s.name: _Buffer(s) for s in streams}
        self.reset_after_ns = int(reset_after_s * NS)
        self.resets = 0

    def clear(self) -> None:
        for buffer in self.buffers.values():
            buffer.clear()

    def push(self, name: str, stamp_ns: int, array: np.ndarray) -> str:
        buffer = self.buffers[name]
        newest = buffer.newest
        if newest is not None and stamp_ns < newest:
            if newest - stamp_ns > self.reset_after_ns:
                self.clear()
                self.resets += 1
                buffer.stamps.append(stamp_ns)
                buffer.arrays.append(array)
                return PushResult.RESET
            return PushResult.OUT_OF_ORDER
        buffer.stamps.append(stamp_ns)
        buffer.arrays.append(array)
        return PushResult.ACCEPTED

    def note_anchor(self, stamp_ns: int) -> bool:
        """An anchor stamp far behind what the buffers hold means time went back: clear. True if cleared."""
        newest = max((b.newest for b in self.buffers.values() if b.newest is not None), default=None)
        if newest is not None and newest - stamp_ns > self.reset_after_ns:
            self.clear()
            self.resets += 1
            return True
        return False

    def sample(self, stamp_ns: int, anchor: tuple[str, np.ndarray] | None = None) -> AlignedSample:
        """The sample at ``stamp_ns``; ``anchor`` (name, array) is present by definition (age 0)."""
        out = AlignedSample(stamp_ns, {}, {}, {})
        for name, buffer in self.buffers.items():
            if anchor is not None and name == anchor[0]:
                out.arrays[name], out.present[name], out.age_s[name] = anchor[1], True, 0.0
                continue
            if buffer.config.window_samples:
                array, age = self._window(buffer, stamp_ns)
            else:
                array, age = self._point(buffer, stamp_ns)
            out.age_s[name] = age
            out.present[name] = array is not None
            if array is not None:
                out.arrays[name] = array
        return out

    @staticmethod
    def _point(buffer: _Buffer, stamp_ns: int) -> tuple[np.ndarray | None, float]:
        i = buffer.index_at_or_before(stamp_ns)
        if i < 0:
            return None, float("nan")
        age = (stamp_ns - buffer.stamps[i]) / NS
        return (buffer.arrays[i] if age <= buffer.config.staleness_s else None), age

    @staticmethod
    def _window(buffer: _Buffer, stamp_ns: int) -> tuple[np.ndarray | None, float]:
        cfg = buffer.config
        i = buffer.index_at_or_before(stamp_ns)
        if i < 0:
            return None, float("nan")
        age = (stamp_ns - buffer.stamps[i]) / NS
        if age > cfg.staleness_s:
            return None, age
        chunks, have = [], 0
        max_gap_ns = int(cfg.max_gap_s * NS)
        while i >= 0 and have < cfg.window_samples:
            chunk = buffer.arrays[i]
            chunks.append(chunk)
            have += chunk.shape[-1]
            if i > 0:
                chunk_ns = int(chunk.shape[-1] / cfg.sample_rate * NS)
                gap = buffer.stamps[i] - chunk_ns - buffer.stamps[i - 1]
                if gap > max_gap_ns:
                    break
            i -= 1
        if have < cfg.window_samples:
            return None, age
        window = np.concatenate(chunks[::-1], axis=-1)
        return window[..., -cfg.window_samples:], age

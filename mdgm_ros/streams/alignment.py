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

Stamp sanity (one odd message never changes global state): a zero or negative stamp is rejected
(``zero_stamp``), so is one more than ``future_tolerance`` ahead of the receiver's clock
(``future_stamp``); a small step backwards is out of order. A stamp older than the stream's newest by
more than ``reset_after`` (bag loop, simulator reset) is held back (``jumped_back``); only when
``reset_confirm`` such messages in a row, in stamp order, confirm the jump are every buffer cleared and
the held messages accepted. A reset of the receiver's clock (``note_clock``, e.g. ``/clock`` going
back) clears at once.
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
    RESET = "reset"                  # a confirmed backwards jump: buffers cleared, the message accepted
    OUT_OF_ORDER = "out_of_order"
    JUMPED_BACK = "jumped_back"      # far back, held until confirmed (rejected if it is not)
    ZERO_STAMP = "zero_stamp"
    FUTURE_STAMP = "future_stamp"

    REJECTED = frozenset({OUT_OF_ORDER, JUMPED_BACK, ZERO_STAMP, FUTURE_STAMP})


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
    held: list = field(default_factory=list)       # (stamp, array) far behind, awaiting confirmation

    def __post_init__(self) -> None:
        self.stamps = deque(maxlen=self.config.capacity)
        self.arrays = deque(maxlen=self.config.capacity)

    @property
    def newest(self) -> int | None:
        return self.stamps[-1] if self.stamps else None

    def clear(self) -> None:
        self.stamps.clear()
        self.arrays.clear()
        self.held.clear()

    def index_at_or_before(self, stamp_ns: int) -> int:
        """Index of the newest entry with stamp <= stamp_ns, or -1."""
        return bisect.bisect_right(self.stamps, stamp_ns) - 1


class Aligner:
    def __init__(self, streams: list[StreamConfig], reset_after_s: float = 1.0, future_tolerance_s: float = 1.0,
                 reset_confirm: int = 5):
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique: {names}")
        if reset_confirm < 1 or future_tolerance_s < 0:
            raise ValueError("reset_confirm must be >= 1 and future_tolerance >= 0")
        self.buffers = {s.name: _Buffer(s) for s in streams}
        self.reset_after_ns = int(reset_after_s * NS)
        self.future_tolerance_ns = int(future_tolerance_s * NS)
        self.reset_confirm = reset_confirm
        self.resets = 0
        self._clock_ns: int | None = None

    def clear(self) -> None:
        for buffer in self.buffers.values():
            buffer.clear()

    def push(self, name: str, stamp_ns: int, array: np.ndarray, now_ns: int | None = None) -> str:
        """Add a message; returns a :class:`PushResult`. ``now_ns``: the receiver's clock, for the
        future-stamp check (None: not checked)."""
        buffer = self.buffers[name]
        if stamp_ns <= 0:
            return PushResult.ZERO_STAMP
        if now_ns is not None and stamp_ns - now_ns > self.future_tolerance_ns:
            return PushResult.FUTURE_STAMP
        newest = buffer.newest
        if newest is not None and newest - stamp_ns > self.reset_after_ns:
            return self._hold(buffer, stamp_ns, array)
        buffer.held.clear()                      # the far-back messages were strays, not a new timeline
        if newest is not None and stamp_ns < newest:
            return PushResult.OUT_OF_ORDER
        buffer.stamps.append(stamp_ns)
        buffer.arrays.append(array)
        return PushResult.ACCEPTED

    def _hold(self, buffer: _Buffer, stamp_ns: int, array: np.ndarray) -> str:
        if buffer.held and stamp_ns < buffer.held[-1][0]:
            buffer.held.clear()                  # not one consistent new timeline
        buffer.held.append((stamp_ns, array))
        if len(buffer.held) < self.reset_confirm:
            return PushResult.JUMPED_BACK
        held = list(buffer.held)
        self.clear()
        self.resets += 1
        for stamp, kept in held:
            buffer.stamps.append(stamp)
            buffer.arrays.append(kept)
        return PushResult.RESET

    def note_clock(self, now_ns: int) -> bool:
        """The receiver's clock; if it went back by more than ``reset_after`` (a /clock reset), clear.
        True if cleared."""
        previous, self._clock_ns = self._clock_ns, now_ns
        if previous is not None and previous - now_ns > self.reset_after_ns:
            self.clear()
            self.resets += 1
            return True
        return False

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

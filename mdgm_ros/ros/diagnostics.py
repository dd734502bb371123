"""The fusion node's /diagnostics, with diagnostic_updater's semantics, as pure functions of its counters.

Per stream (``<node fqn>: <modality>``), like FrequencyStatus + TimeStampStatus:
* STALE: nothing arrived within the window; ERROR: messages arrived but every one was rejected;
* WARN: the rate over the window is outside ``[min_rate, max_rate] * (1 -/+ rate_tolerance)``, the newest
  stamp is older than ``max_stamp_age`` (or in the future by more than that), or the stream is missing
  (older than its staleness at the last check); an incompatible publisher (type or QoS) is WARN too;
* OK otherwise.
``<fqn>: model``: ERROR when no output for longer than a window (WARN before the first), WARN when
``use_sim_time`` is on and no /clock has arrived. ``<fqn>: anomaly`` carries the anomaly state: its level
stays OK (an anomaly is a finding about the robot, not a fault of this node); message and values say it.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

OK, WARN, ERROR, STALE = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
                          DiagnosticStatus.STALE)


@dataclass
class StreamStats:
    received: int = 0
    accepted: int = 0
    rejects: Counter = field(default_factory=Counter)
    arrivals: deque = field(default_factory=lambda: deque(maxlen=4000))   # monotonic receive times (accepted)
    last_reject: float = float("-inf")
    present: bool = False
    age_s: float = float("nan")
    score: float = float("nan")
    out_of_range: int = 0                        # fusion steps where it was outside its training range
    fallback: Counter = field(default_factory=Counter)   # baseline -> steps its imputation was the baseline
    incompatible: Counter = field(default_factory=Counter)                 # "type" / "qos" -> events


@dataclass
class StreamCheck:
    """What one stream is checked against (its parameters)."""

    topic: str
    staleness: float
    min_rate: float = 0.0
    max_rate: float = 0.0
    rate_tolerance: float = 0.1
    max_stamp_age: float = 0.0


def stream_status(name: str, stats: StreamStats, check: StreamCheck, now: float, window: float,
                  stamp_age_s: float, hardware_id: str) -> DiagnosticStatus:
    """``now`` is monotonic; ``stamp_age_s`` = node clock now - newest accepted stamp (NaN if none)."""
    in_window = sum(1 for t in reversed(stats.arrivals) if now - t <= window)
    rate = in_window / window
    since_last = now - stats.arrivals[-1] if stats.arrivals else float("inf")
    level, message = _stream_level(stats, check, rate, in_window, since_last, now, window, stamp_age_s)
    values = {"present": since_last <= check.staleness, "rate_hz": round(rate, 2),
              "since_last_s": round(since_last, 3) if np.isfinite(since_last) else "never",
              "stamp_age_s": round(stamp_age_s, 4), "received": stats.received, "accepted": stats.accepted,
              "topic": check.topic, "window_s": window, "out_of_range": stats.out_of_range,
              **{f"fallback_{source}": count for source, count in sorted(stats.fallback.items())},
              **{f"rejected_{reason}": count for reason, count in sorted(stats.rejects.items())},
              **{f"incompatible_{kind}": count for kind, count in sorted(stats.incompatible.items())}}
    return make_status(name, level, message, hardware_id, values)


def _stream_level(stats: StreamStats, check: StreamCheck, rate: float, in_window: int, since_last: float,
                  now: float, window: float, stamp_age_s: float) -> tuple[bytes, str]:
    if in_window == 0:
        if now - stats.last_reject <= window:
            return ERROR, "every message is rejected"
        if stats.incompatible:
            kinds = " and ".join(sorted(stats.incompatible))
            return STALE, f"nothing received; a publisher has an incompatible {kinds}"
        return STALE, "nothing received" if stats.accepted == 0 else f"nothing received for {since_last:.1f} s"
    low = check.min_rate * (1 - check.rate_tolerance)
    high = check.max_rate * (1 + check.rate_tolerance)
    if check.min_rate > 0 and rate < low:
        return WARN, f"rate {rate:.1f} Hz < {low:.1f} Hz"
    if check.max_rate > 0 and rate > high:
        return WARN, f"rate {rate:.1f} Hz > {high:.1f} Hz"
    if check.max_stamp_age > 0 and np.isfinite(stamp_age_s) and abs(stamp_age_s) > check.max_stamp_age:
        side = "old" if stamp_age_s > 0 else "in the future"
        return WARN, f"stamps {abs(stamp_age_s):.2f} s {side} (limit {check.max_stamp_age} s)"
    if stats.incompatible:
        return WARN, f"a publisher has an incompatible {' and '.join(sorted(stats.incompatible))}"
    if since_last > check.staleness:
        return WARN, f"missing (last message {since_last:.2f} s ago > staleness {check.staleness} s)"
    return OK, "ok"


def model_status(name: str, values: dict, published: int, since_output: float, window: float,
                 waiting_for_clock: bool, hardware_id: str) -> DiagnosticStatus:
    if waiting_for_clock:
        level, message = WARN, "use_sim_time is on and no /clock has arrived: no time, no output"
    elif published == 0:
        level, message = WARN, "no output yet"
    elif since_output > window:
        level, message = ERROR, f"no output for {since_output:.1f} s"
    else:
        level, message = OK, "publishing"
    return make_status(name, level, message, hardware_id, {**values, "published": published,
                                                           "since_output_s": round(since_output, 3)})


def anomaly_status(name: str, scores: dict[str, float], thresholds: dict[str, float],
                   hardware_id: str) -> DiagnosticStatus:
    flagged = [m for m, s in scores.items() if np.isfinite(s) and s > thresholds.get(m, float("inf"))]
    message = f"anomalous: {', '.join(flagged)}" if flagged else "normal"
    values = {**{f"score_{m}": round(s, 3) for m, s in scores.items()},
              **{f"threshold_{m}": round(t, 3) for m, t in thresholds.items()}, "flagged": ",".join(flagged)}
    return make_status(name, OK, message, hardware_id, values)


def make_status(name: str, level: bytes, message: str, hardware_id: str, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

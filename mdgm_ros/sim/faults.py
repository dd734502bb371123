"""Fault kinds, their deterministic schedule and the labels the simulator emits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# kind -> what happens (see robot.PandaTableSim for the mechanics)
FAULT_KINDS = {
    "collision": "an unexpected obstacle appears in the arm's path",
    "object_drop": "the gripper motor loses its force while carrying: the fingers go slack and the object drops",
    "joint_fault": "a shoulder or elbow motor loses most of its torque (the arm sags, tracking fails); then the "
                   "arm homes to its rest posture in joint space (1 s, inside the label)",
    "camera_occlusion": "a dark patch covers a large part of the camera image",
    "camera_blackout": "the camera returns black frames",
    "stream_dropout": "one sensor stream stops publishing",
    "audio_clipping": "the microphone gain jumps and the signal clips",
    "audio_noise": "a loud broadband noise burst on the microphone",
}
DROPOUT_STREAMS = ("camera", "joints", "audio", "tactile")


@dataclass(frozen=True)
class FaultSpec:
    """A fault planned at ``start_s`` for ``duration_s`` seconds (sim time from the start)."""

    kind: str
    start_s: float
    duration_s: float
    detail: dict[str, Any] = field(default_factory=dict)


def parse_kinds(text: str, known: Mapping[str, str] = FAULT_KINDS) -> list[str]:
    """'all' | 'none' | '' | comma list -> validated kinds (of ``known``: the Panda's by default)."""
    text = text.strip()
    if text in ("", "none"):
        return []
    kinds = list(known) if text == "all" else [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; known: {sorted(known)}")
    return kinds


def schedule_faults(kinds: Sequence[str], duration_s: float, seed: int, per_kind: int = 0,
                    warmup_s: float = 4.0, min_gap_s: float = 2.5,
                    length_s: tuple[float, float] = (1.0, 2.0),
                    streams: Sequence[str] = DROPOUT_STREAMS) -> list[FaultSpec]:
    """Non-overlapping faults at random times, ``per_kind`` of each kind (0: one per started minute);
    a stream dropout silences one of ``streams``. Deterministic for a seed; kinds that do not fit are
    left out (the labels say what happened)."""
    rng = np.random.default_rng([seed, 7919])
    count = per_kind or max(1, int(np.ceil(duration_s / 60.0)))
    wanted = [k for k in kinds for _ in range(count)]
    rng.shuffle(wanted)
    slots = int((duration_s - warmup_s - 1.0) // (length_s[1] + min_gap_s))
    if slots <= 0 or not wanted:
        return []
    chosen = sorted(rng.choice(slots, size=min(slots, len(wanted)), replace=False))
    specs = []
    for slot, kind in zip(chosen, wanted):
        span = float(rng.uniform(*length_s))
        start = warmup_s + slot * (length_s[1] + min_gap_s) + float(rng.uniform(0, length_s[1] - span + min_gap_s / 2))
        detail = {"stream": str(rng.choice(streams))} if kind == "stream_dropout" else {}
        specs.append(FaultSpec(kind, round(start, 3), round(span, 3), detail))
    return specs

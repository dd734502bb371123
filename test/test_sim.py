"""The PyBullet simulator: rates, determinism, fault mechanics and labels."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mdgm_ros.sim import FAULT_KINDS, JOINT_NAMES, FaultSpec, PandaTableSim, SimConfig, schedule_faults
from mdgm_ros.sim.faults import parse_kinds


def _run(seconds: float, **config):
    with PandaTableSim(SimConfig(**config)) as sim:
        return list(sim.events(seconds)), sim.labels


def test_streams_come_at_their_rates_with_their_shapes():
    events, _ = _run(2.0, seed=0)
    counts = Counter(e.stream for e in events)
    assert counts["joints"] == 400 and counts["tactile"] == 200 and counts["audio"] == 100
    assert 59 <= counts["camera"] <= 61
    first = {e.stream: e.data for e in events}
    assert first["camera"].shape == (64, 64, 3) and first["camera"].dtype == np.uint8
    assert first["joints"].shape == (3, 9)
    assert first["tactile"].shape == (2, 4, 4)
    assert first["audio"].shape == (320,) and np.abs(first["audio"]).max() <= 1.0
    stamps = [e.stamp_ns for e in events if e.stream != "phase"]
    assert stamps == sorted(stamps)


def test_same_seed_same_run_other_seed_other_run():
    a, _ = _run(1.0, seed=5)
    b, _ = _run(1.0, seed=5)
    c, _ = _run(1.0, seed=6)
    cams = lambda ev: np.stack([e.data for e in ev if e.stream == "camera"])  # noqa: E731
    assert np.array_equal(cams(a), cams(b))
    assert np.array_equal(np.stack([e.data for e in a if e.stream == "audio"]),
                          np.stack([e.data for e in b if e.stream == "audio"]))
    assert not np.array_equal(cams(a), cams(c))


def test_fault_schedule_is_deterministic_and_non_overlapping():
    kinds = list(FAULT_KINDS)
    plan = schedule_faults(kinds, 120.0, seed=1)
    assert plan == schedule_faults(kinds, 120.0, seed=1)
    assert Counter(f.kind for f in plan) == Counter({k: 2 for k in kinds})
    spans = sorted((f.start_s, f.start_s + f.duration_s) for f in plan)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="unknown fault"):
        parse_kinds("collision,meteor")


@pytest.mark.parametrize("kind,check", [
    ("camera_blackout", lambda ev, span, lb: np.mean([e.data.mean() for e in ev
                                                      if e.stream == "camera" and span(e)]) < 10),
    ("stream_dropout", lambda ev, span, lb: not any(e.stream == "joints" and span(e) for e in ev)),
    ("audio_noise", lambda ev, span, lb: np.std(np.concatenate([e.data for e in ev
                                                                if e.stream == "audio" and span(e)])) > 0.15),
    ("joint_fault", lambda ev, span, lb: max(abs(e.data[2, JOINT_NAMES.index(lb.detail["joint"])])
                                             for e in ev if e.stream == "joints" and span(e)) < 11),
])
def test_each_fault_does_what_it_says_inside_its_label(kind, check):
    detail = {"stream": "joints"} if kind == "stream_dropout" else {}
    events, labels = _run(3.5, seed=2, faults=(FaultSpec(kind, 1.0, 1.0, detail),))
    assert [lb.kind for lb in labels] == [kind]
    label = labels[0]
    homing = 1e9 if kind == "joint_fault" else 0.0                # the label also covers the move home
    assert (label.end_ns - label.start_ns) == pytest.approx(1e9 + homing, abs=1e7)
    assert [e.data for e in events if e.stream == "fault"] == [label]
    inside = lambda e: label.start_ns + 2e8 <= e.stamp_ns <= label.start_ns + 1e9  # noqa: E731
    assert check(events, inside, label)
    outside = [e for e in events if e.stream == "camera" and e.stamp_ns > label.end_ns + 1e8]
    assert outside and np.mean([e.data.mean() for e in outside]) > 60     # the scene is back afterwards


def test_collision_puts_an_obstacle_in_the_way_and_makes_noise():
    quiet, _ = _run(2.5, seed=4)
    events, labels = _run(2.5, seed=4, faults=(FaultSpec("collision", 1.0, 1.4),))
    assert labels[0].kind == "collision"
    loud = lambda ev: max(np.abs(e.data).max() for e in ev if e.stream == "audio" and e.stamp_ns > labels[0].start_ns)  # noqa: E731
    effort = lambda ev: max(np.abs(e.data[2, :7]).max()  # noqa: E731
                            for e in ev if e.stream == "joints" and e.stamp_ns > labels[0].start_ns)
    assert loud(events) > loud(quiet) or effort(events) > 1.2 * effort(quiet)


def test_object_drop_waits_for_a_carried_object_then_drops_it():
    events, labels = _run(7.0, seed=1, faults=(FaultSpec("object_drop", 1.0, 1.5),))
    assert [lb.kind for lb in labels] == ["object_drop"]
    start, end = labels[0].start_ns, labels[0].end_ns

    def tactile(lo, hi):
        return [float(e.data.sum()) for e in events if e.stream == "tactile" and lo <= e.stamp_ns <= hi]
    fingers = [e.data[0, 7:9] for e in events if e.stream == "joints" and start + 5e8 <= e.stamp_ns <= end]
    assert min(tactile(start - 2e8, start)) > 5.0                 # it was carrying something
    assert max(tactile(start + 5e8, end)) < 1.0                   # nothing between the fingers any more
    assert np.max(fingers) > 0.01                                 # ... which went slack: not at the closed command


def test_joint_fault_ends_with_the_arm_back_at_its_rest_posture():
    events, labels = _run(5.0, seed=2, faults=(FaultSpec("joint_fault", 1.0, 1.5),))
    label = labels[0]
    sagged = [e.data[0, :7] for e in events if e.stream == "joints" and e.stamp_ns <= label.start_ns + 1.5e9]
    home = [e.data[0, :7] for e in events
            if e.stream == "joints" and label.end_ns - 2e7 <= e.stamp_ns <= label.end_ns]
    rest = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785])
    assert np.abs(sagged[-1] - rest).max() > 0.2                  # the fault moved it away
    assert np.abs(home[-1] - rest).max() < 0.1                    # and the label ends at home

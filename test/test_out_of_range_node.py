"""Streams driven far beyond their training range, live over DDS across processes: the synthetic
streams send the first joint at 20 standard deviations from its mean and a saturated tactile pad
(``--beyond-range-after``); the fusion node (a bundle with training bounds) flags both within 2 samples,
leaves them out of the posterior (``Latent.present``), imputes them with their predictive std, counts
them in /diagnostics, and publishes only finite numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from ros_env import FusionRun, spin_for, spin_until
from test_fusion_node import _bundle

DRIVE_AFTER = 6.0


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from mdgm_ros.msg import AnomalyScores, ImputedArray, Latent

    tmp = tmp_path_factory.mktemp("beyond_range")
    bundle = _bundle(tmp / "model", 8, 0)
    run = FusionRun.start(bundle, tmp, stream_args=("--beyond-range-after", str(DRIVE_AFTER)),
                          probe_name="beyond_range_probe")
    probe = run.probe
    record = {"latent": [], "anomaly": [], "diagnostics": [], "events": [], "joints": [], "tactile": [],
              "joints_std": [], "tactile_std": []}
    probe.create_subscription(Latent, "/mdgm_fusion/latent", record["latent"].append, 100)
    probe.create_subscription(AnomalyScores, "/mdgm_fusion/anomaly", record["anomaly"].append, 100)
    probe.create_subscription(DiagnosticArray, "/diagnostics", record["diagnostics"].append, 10)
    probe.create_subscription(String, "/synthetic_streams/events", record["events"].append, 10)
    probe.create_subscription(JointState, "/mdgm_fusion/imputed/joints", record["joints"].append, 100)
    probe.create_subscription(Image, "/mdgm_fusion/imputed/tactile", record["tactile"].append, 100)
    for name in ("joints", "tactile"):
        probe.create_subscription(ImputedArray, f"/mdgm_fusion/imputed_std/{name}", record[f"{name}_std"].append, 100)
    try:
        assert spin_until(probe, lambda: record["events"], 60 + DRIVE_AFTER), run.node_log()
        driven_ns = int(record["events"][0].data.split()[1])
        after = lambda: [m for m in record["anomaly"] if _ns(m.header.stamp) >= driven_ns]  # noqa: E731
        assert spin_until(probe, lambda: len(after()) >= 20 and record["diagnostics"], 60), run.node_log()
        spin_for(probe, 2.5)                          # /diagnostics (1 Hz) counting the driven steps
        yield {"record": record, "driven_ns": driven_ns, "node": run.node}
    finally:
        run.stop()


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def test_both_streams_are_flagged_within_two_samples_and_stay_flagged(ros):
    record, driven = ros["record"], ros["driven_ns"]
    before = [m for m in record["anomaly"] if _ns(m.header.stamp) < driven]
    after = [m for m in record["anomaly"] if _ns(m.header.stamp) >= driven]
    names = list(after[0].modalities)
    joints, tactile = names.index("joints"), names.index("tactile")
    assert before
    for msg in after[1:]:                             # the first sample may still pair an older message
        assert msg.flagged[joints] and msg.flagged[tactile] and msg.total_flagged
        assert msg.score[joints] <= msg.threshold[joints] + 5.0


def test_their_experts_are_left_out_and_they_are_imputed(ros):
    record, driven = ros["record"], ros["driven_ns"]
    before = [m for m in record["latent"] if _ns(m.header.stamp) < driven]
    after = [m for m in record["latent"] if _ns(m.header.stamp) >= driven][1:]
    names = list(after[0].modalities)
    assert before and all(all(m.present) for m in before[-30:])
    assert after and all(not m.present[names.index("joints")] and not m.present[names.index("tactile")]
                         and m.present[names.index("camera")] for m in after)
    imputed = [m for m in record["joints"] if _ns(m.header.stamp) >= driven]
    assert imputed and all(abs(m.position[0]) < 5.0 for m in imputed)    # from the others, not the wild value
    assert [m for m in record["tactile"] if _ns(m.header.stamp) >= driven]


def test_each_imputed_element_goes_out_with_its_predictive_std(ros):
    record = ros["record"]
    stds = {_ns(m.header.stamp): m for m in record["joints_std"]}
    paired = [(m, stds[_ns(m.header.stamp)]) for m in record["joints"] if _ns(m.header.stamp) in stds]
    assert len(paired) >= 10                          # the same steps as the imputations
    for imputed, std in paired:
        assert std.modality == "joints" and [d.label for d in std.layout.dim] == ["element"]
        values = np.asarray(std.data)
        assert values.shape == (27,) and np.isfinite(values).all() and (values > 0).all()
    tactile = record["tactile_std"][-1]
    assert [d.size for d in tactile.layout.dim] == [2, 4, 4] and np.isfinite(tactile.data).all()


def test_every_published_number_is_finite_and_the_steps_are_counted(ros):
    record = ros["record"]
    for msg in record["latent"]:
        assert np.isfinite(msg.mean).all() and np.isfinite(msg.std).all()
    for msg in record["anomaly"]:
        present = [not math.isnan(s) for s in msg.score]
        assert any(present) and math.isfinite(msg.total)
    values = {}
    for array in record["diagnostics"][-2:]:
        for status in array.status:
            values.update({f"{status.name.rsplit(': ', 1)[-1]}.{kv.key}": kv.value for kv in status.values})
    assert int(values["joints.out_of_range"]) > 0 and int(values["tactile.out_of_range"]) > 0
    assert int(values["camera.out_of_range"]) == 0
    assert "joints.rejected_impossible" not in values and int(values["model.callback_errors"]) == 0
    assert ros["node"].poll() is None


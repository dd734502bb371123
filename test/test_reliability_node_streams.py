"""The fusion node under the reliability issue's stream attacks, over real DDS across processes:
``synthetic_streams --hostile`` sends zero, future and invalid stamps, joints at 3e38, PCM at 1e20, a
1 MB frame_id, large frames and big-endian tactile frames among the valid streams. Each odd message is
rejected and counted, no buffer is cleared, every published number is finite, headers stay short."""
from __future__ import annotations

import math
import time

import pytest
from ros_env import FusionRun, spin_until
from test_fusion_node import _bundle


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray

    from mdgm_ros.msg import AnomalyScores, Latent

    tmp = tmp_path_factory.mktemp("hostile")
    bundle = _bundle(tmp / "model", 8, 0)
    run = FusionRun.start(bundle, tmp, stream_args=("--malformed", "--hostile"), probe_name="hostile_probe")
    node, probe = run.node, run.probe
    record = {"latent": [], "anomaly": [], "diagnostics": []}
    probe.create_subscription(Latent, "/mdgm_fusion/latent", record["latent"].append, 50)
    probe.create_subscription(AnomalyScores, "/mdgm_fusion/anomaly", record["anomaly"].append, 50)
    probe.create_subscription(DiagnosticArray, "/diagnostics", record["diagnostics"].append, 10)

    def counters():
        values = {}
        for array in record["diagnostics"][-3:]:
            for status in array.status:
                if "mdgm_fusion" in status.name:
                    values.update({f"{status.name.rsplit(': ', 1)[-1]}.{kv.key}": kv.value for kv in status.values})
        return values

    try:
        assert spin_until(probe, lambda: len(record["latent"]) > 20, 90), (tmp / "node.log").read_text()[-3000:]
        wanted = ["camera.rejected_zero_stamp", "camera.rejected_future_stamp", "camera.rejected_invalid_stamp",
                  "joints.rejected_impossible", "audio.rejected_out_of_range"]
        assert spin_until(probe, lambda: all(k in counters() for k in wanted), 90), counters()
        yield {"record": record, "counters": counters(), "node": node, "tmp": tmp}
    finally:
        run.stop()


def test_odd_messages_are_rejected_and_counted_without_clearing_buffers(ros):
    counters = ros["counters"]
    for key in ("camera.rejected_zero_stamp", "camera.rejected_future_stamp", "camera.rejected_invalid_stamp",
                "joints.rejected_impossible", "audio.rejected_out_of_range"):
        assert int(counters[key]) >= 1, key
    assert int(counters["model.buffer_resets"]) == 0
    assert int(counters["model.callback_errors"]) == 0
    assert ros["node"].poll() is None


def test_published_numbers_are_finite_and_headers_short(ros):
    latents, anomalies = ros["record"]["latent"], ros["record"]["anomaly"]
    assert latents and anomalies
    assert all(math.isfinite(v) for m in latents for v in [*m.mean, *m.std])
    for m in anomalies:                  # NaN marks a missing modality (by design); nothing may be infinite
        assert not any(math.isinf(s) for s in m.score) and math.isfinite(m.total)
        assert sum(math.isfinite(s) for s in m.score) >= 1
    assert max(len(m.header.frame_id) for m in latents) <= 256
    stamps = [m.header.stamp.sec for m in latents]
    assert min(stamps) > 0 and max(stamps) < time.time() + 60          # no zero or future stamp reaches an output

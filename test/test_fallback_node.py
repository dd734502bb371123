"""The fallback to a baseline, live over DDS across processes: a bundle whose held-out table says the last
value does best for the first 3 steps of an audio outage and the training mean after; the synthetic
streams stop the audio; the fusion node publishes the last chunk's spectrogram, then the training mean,
each marked in ImputedArray.source and counted in /diagnostics; switched off live, the model's imputation
goes out again."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from ros_env import FusionRun, call, spin_for, spin_until
from test_fusion_node import _bundle

from mdgm_ros.core import load_bundle, save_bundle
from mdgm_ros.core.engine.fallback import LAST, MEAN, MODEL, FallbackTable

STOP_AUDIO_AFTER = 5.0


def _bundle_with_table(path):
    plain = load_bundle(_bundle(path.with_name("plain"), 8, 0))
    table = FallbackTable([3, 1000], {"audio": {MODEL: [1.0, 1.0], LAST: [0.1, 4.0], MEAN: [2.0, 0.5]}},
                          {"audio": [100, 100]})
    plain.calibration.fallback = table.to_dict()
    return save_bundle(path, plain.model, plain.calibration, name="fallback")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from mdgm_ros.msg import ImputedArray, ModelInfo

    tmp = tmp_path_factory.mktemp("fallback")
    bundle = _bundle_with_table(tmp / "model")
    run = FusionRun.start(bundle, tmp, "-p", "audio.staleness:=0.1",
                          stream_args=("--stop-audio-after", str(STOP_AUDIO_AFTER)), probe_name="fallback_probe")
    probe = run.probe
    record = {"audio": [], "audio_std": [], "diagnostics": [], "events": [], "info": []}
    probe.create_subscription(ImputedArray, "/mdgm_fusion/imputed/audio", record["audio"].append, 200)
    probe.create_subscription(ImputedArray, "/mdgm_fusion/imputed_std/audio", record["audio_std"].append, 200)
    probe.create_subscription(DiagnosticArray, "/diagnostics", record["diagnostics"].append, 10)
    probe.create_subscription(String, "/synthetic_streams/events", record["events"].append, 10)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(ModelInfo, "/mdgm_fusion/model_info", record["info"].append, latched)
    try:
        assert spin_until(probe, lambda: record["events"], 60 + STOP_AUDIO_AFTER), run.node_log()
        stopped = int(record["events"][0].data.split()[1])
        assert spin_until(probe, lambda: len([m for m in record["audio"] if _ns(m) >= stopped]) >= 30, 30), \
            run.node_log()
        spin_for(probe, 2.0)                             # /diagnostics (1 Hz) counting the fallbacks
        yield {"record": record, "probe": probe, "bundle": load_bundle(bundle), "run": run}
    finally:
        run.stop()


def _ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_the_last_value_then_the_training_mean_go_out_marked(ros):
    record, bundle = ros["record"], ros["bundle"]
    stopped = int(record["events"][0].data.split()[1])
    audio = sorted((m for m in record["audio"] if _ns(m) >= stopped), key=_ns)
    sources = [m.source for m in audio]
    # one outage (the audio stays off): the last value for the first 3 steps, the training mean after
    first_mean = sources.index(MEAN)
    assert sources[:first_mean] and set(sources[:first_mean]) == {LAST} and first_mean <= 3, sources[:10]
    assert set(sources[first_mean:]) == {MEAN}, sources
    held = [np.asarray(m.data) for m in audio[:first_mean]]
    assert all(np.array_equal(h, held[0]) for h in held)            # one chunk's spectrogram, held
    model = bundle.model
    expected = model.normalization_stats("audio")[0].expand(model.specs["audio"].feature_shape).numpy()
    for msg in audio[first_mean:]:
        assert np.allclose(np.asarray(msg.data).reshape(expected.shape), expected, atol=1e-5)
    # the std topic says the same, its spread the baseline's held-out error (sqrt(0.5) x the band's std)
    std = {_ns(m): m for m in record["audio_std"]}
    paired = [(msg, std[_ns(msg)]) for msg in audio if _ns(msg) in std]      # the probe may miss a message
    assert len(paired) >= 0.9 * len(audio) and all(s.source == msg.source for msg, s in paired)
    scale = model.normalization_stats("audio")[1].expand(model.specs["audio"].feature_shape).numpy()
    assert np.allclose(np.asarray(paired[-1][1].data).reshape(scale.shape), np.sqrt(0.5) * scale, rtol=1e-4)
    details = json.loads(record["info"][-1].details_json)["fallback"]
    assert details["on"] and details["modalities"] == {"audio": "last_value up to 3 steps, training_mean after"}


def test_fallbacks_are_counted_in_diagnostics(ros):
    statuses = {s.name: {kv.key: kv.value for kv in s.values} for s in ros["record"]["diagnostics"][-1].status}
    audio = statuses["/mdgm_fusion: audio"]
    # the last value at the start of the outage (and of any late chunk before it), the mean since
    assert int(audio["fallback_last_value"]) >= 1 and int(audio["fallback_training_mean"]) >= 20, audio
    assert "fallback_last_value" not in statuses["/mdgm_fusion: joints"]


def test_switched_off_live_the_model_imputation_goes_out(ros):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    record, probe = ros["record"], ros["probe"]
    client = probe.create_client(SetParameters, "/mdgm_fusion/set_parameters")
    off = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=False)
    result = call(probe, client, SetParameters.Request(parameters=[Parameter(name="fallback", value=off)]))
    assert result.results[0].successful, result.results[0].reason
    assert spin_until(probe, lambda: not json.loads(record["info"][-1].details_json)["fallback"]["on"], 5)
    switched, count = time.monotonic(), len(record["audio"])
    assert spin_until(probe, lambda: len(record["audio"]) > count + 20, 10)
    later = record["audio"][count + 5:]
    assert later and {m.source for m in later} == {MODEL}, {m.source for m in later}
    assert len({tuple(np.round(m.data[:8], 4)) for m in later}) > 1      # the model's, moving with the others
    assert time.monotonic() - switched < 30

"""The fusion node over real DDS, in separate processes, on a private ROS_DOMAIN_ID.

A publisher process feeds the four synthetic streams at their real rates (camera 30 Hz, joints 200 Hz,
audio 50 chunks/s, tactile 100 Hz) with one malformed message per stream every second and stops the
audio after a few seconds; the fusion node runs in its own process; this process subscribes.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import small_specs
from ros_env import FusionRun, call, spin_for, spin_until

from mdgm_ros.core import ModelConfig, MultimodalVAE, TrainConfig, calibrate_anomaly, save_bundle, train
from mdgm_ros.core.engine import loop as training
from mdgm_ros.core.engine import synthetic

STOP_AUDIO_AFTER = 6.0
AUDIO_STALENESS = 0.1


def _bundle(path, latent_dim: int, seed: int):
    torch.manual_seed(seed)
    model = MultimodalVAE(ModelConfig(tuple(small_specs()), latent_dim=latent_dim))
    data = synthetic.make_dataset(model.config.modalities, 600, seed=seed)
    feats, mask = training.raw_to_features(model, data.raw), torch.from_numpy(data.mask)
    training.fit_normalization(model, feats, mask)
    norm = training.normalize_features(model, feats)
    train(model, norm, mask, TrainConfig(epochs=3, seed=seed))
    return save_bundle(path, model, calibrate_anomaly(model, norm, mask), name=f"test{latent_dim}")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    """Node + publisher processes and a probe node that records what the fusion node publishes."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray, String

    from mdgm_ros.msg import AnomalyScores, ImputedArray, Latent, ModelInfo

    tmp = tmp_path_factory.mktemp("ros")
    bundles = {"a": _bundle(tmp / "model_a", 8, 0), "b": _bundle(tmp / "model_b", 6, 1)}
    run = FusionRun.start(bundles["a"], tmp, "-p", f"audio.staleness:={AUDIO_STALENESS}",
                          "-p", "standard_mirrors:=true",
                          stream_args=("--malformed", "--stop-audio-after", str(STOP_AUDIO_AFTER)))
    node, streams, probe, _env = run.node, run.streams, run.probe, run.env
    record = {"camera": [], "latent": [], "anomaly": [], "imputed_audio": [], "audio_std": [], "diagnostics": [],
              "info": [],
              "events": [], "mirror_latent": [], "mirror_anomaly": [], "mirror_audio": []}

    def keep(key):
        return lambda msg: record[key].append((time.monotonic(), msg))

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    probe.create_subscription(Image, "/camera/image_raw", keep("camera"), qos_profile_sensor_data)
    probe.create_subscription(Latent, "/mdgm_fusion/latent", keep("latent"), 50)
    probe.create_subscription(AnomalyScores, "/mdgm_fusion/anomaly", keep("anomaly"), 50)
    probe.create_subscription(ImputedArray, "/mdgm_fusion/imputed/audio", keep("imputed_audio"), 50)
    probe.create_subscription(ImputedArray, "/mdgm_fusion/imputed_std/audio", keep("audio_std"), 50)
    probe.create_subscription(JointState, "/mdgm_fusion/mirror/latent", keep("mirror_latent"), 50)
    probe.create_subscription(JointState, "/mdgm_fusion/mirror/anomaly", keep("mirror_anomaly"), 50)
    probe.create_subscription(Float32MultiArray, "/mdgm_fusion/mirror/imputed/audio", keep("mirror_audio"), 50)
    probe.create_subscription(DiagnosticArray, "/diagnostics", keep("diagnostics"), 10)
    probe.create_subscription(ModelInfo, "/mdgm_fusion/model_info", keep("info"), latched)
    probe.create_subscription(String, "/synthetic_streams/events", keep("events"), 10)
    try:
        assert spin_until(probe, lambda: len(record["latent"]) > 0, 60), (tmp / "node.log").read_text()[-3000:]
        spin_until(probe, lambda: record["events"] != [], STOP_AUDIO_AFTER + 20)
        spin_for(probe, 3.0)
        yield {"probe": probe, "record": record, "node": node, "streams": streams, "bundles": bundles, "tmp": tmp}
    finally:
        run.stop()


def _ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_latent_is_stamped_with_the_camera_stamp_and_laid_out_as_documented(ros):
    record = ros["record"]
    camera = {_ns(m) for _, m in record["camera"]}
    latents = [m for _, m in record["latent"]]
    assert len(latents) > 100
    # only where this probe was already receiving the camera (topics are discovered one by one)
    seen = [m for m in latents if min(camera) <= _ns(m) <= max(camera)]
    assert len(seen) > 100
    # the camera is best effort: under load this probe can miss a frame the node received. A latent
    # stamped with such a frame lies in a gap of the probe's camera record; anything else is a stray.
    ordered = sorted(camera)
    period = float(np.median(np.diff(ordered)))
    gaps = [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a > 1.5 * period]
    strays = [_ns(m) for m in seen if _ns(m) not in camera and not any(a < _ns(m) < b for a, b in gaps)]
    assert not strays, f"{len(strays)}/{len(latents)} latent stamps are no camera stamp, e.g. {strays[:3]} " \
                       f"(camera {min(camera)}..{max(camera)})"
    in_gaps = [m for m in seen if _ns(m) not in camera]
    assert len(in_gaps) <= 0.05 * len(seen), f"{len(in_gaps)} latents fall on frames this probe missed"
    last = latents[-1]
    assert last.model_id.startswith("test8-") and list(last.modalities) == ["camera", "joints", "audio", "tactile"]
    assert len(last.mean) == len(last.std) == 8 and all(s > 0 for s in last.std)
    assert list(last.present) == [True, True, False, True]             # the audio stopped before the end
    mirror = ros["record"]["mirror_latent"][-1][1]                   # standard_mirrors: JointState layout
    assert list(mirror.name) == [f"z{i}" for i in range(8)] and len(mirror.effort) == 8
    # delivered fraction over the steady part of the run
    first, final = _ns(latents[10]), _ns(latents[-10])
    frames = [s for s in camera if first <= s <= final]
    delivered = len({_ns(m) for m in latents if first <= _ns(m) <= final}) / len(frames)
    assert delivered > 0.9, delivered


def test_stopping_audio_makes_imputed_audio_appear_within_its_staleness(ros):
    """Receive times (same machine, same clock), since the microphone's own chunks carry no stamp."""
    record = ros["record"]
    stopped_at = record["events"][0][0]
    imputed = [t for t, _ in record["imputed_audio"]]
    frames = [t for t, _ in record["latent"]]
    flowing = [t for t in frames if stopped_at - 3.0 < t < stopped_at - 0.05]
    imputed_flowing = [t for t in imputed if stopped_at - 3.0 < t < stopped_at - 0.05]
    # a loaded 2-core machine can delay a chunk past the staleness now and then: audio is then
    # truly missing for that frame, but never for more than a few frames
    assert len(imputed_flowing) <= 0.1 * len(flowing), (len(imputed_flowing), len(flowing))
    silent = [t for t in frames if t > stopped_at + 0.3]
    imputed_silent = [t for t in imputed if t > stopped_at + 0.3]
    assert silent and len(imputed_silent) >= 0.95 * len(silent), (len(imputed_silent), len(silent))
    after = [t for t in imputed if t > stopped_at]
    assert after, "no imputed audio after the microphone stopped"
    delay = after[0] - stopped_at
    assert delay <= AUDIO_STALENESS + 2 / 30 + 0.05, delay   # staleness + up to two camera frames
    msg = record["imputed_audio"][-1][1]
    assert [d.label for d in msg.layout.dim] == ["mel", "frame"] and len(msg.data) == 16 * 17
    assert msg.modality == "audio" and _ns(msg) in {_ns(m) for _, m in record["latent"]}   # stamped now
    assert record["mirror_audio"] and len(record["mirror_audio"][-1][1].data) == 16 * 17
    anomaly = record["anomaly"][-1][1]
    assert list(anomaly.modalities) == ["camera", "joints", "audio", "tactile"]
    # audio published, then went silent: its absence is scored (how rare it was on normal data)
    assert np.isfinite(anomaly.score[2]) and anomaly.score[2] > 2.0, anomaly.score
    assert np.isfinite(anomaly.threshold[0]) and np.isfinite(anomaly.total_threshold)
    mirror = record["mirror_anomaly"][-1][1]
    assert list(mirror.name) == ["total", "camera", "joints", "audio", "tactile"]


def test_imputed_audio_goes_out_with_its_std_until_imputed_std_is_switched_off_live(ros):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    record, probe = ros["record"], ros["probe"]
    assert spin_until(probe, lambda: len(record["audio_std"]) > 5, 10)
    imputed = {_ns(m): m for _, m in record["imputed_audio"]}
    std = record["audio_std"][-1][1]
    assert _ns(std) in imputed and [d.label for d in std.layout.dim] == ["mel", "frame"]
    assert len(std.data) == 16 * 17 and np.isfinite(std.data).all() and min(std.data) > 0
    details = json.loads(record["info"][-1][1].details_json)["imputed_std"]
    assert details["modalities"] == ["audio", "joints", "tactile"] and details["calibrated"]["audio"] is False
    client = probe.create_client(SetParameters, "/mdgm_fusion/set_parameters")
    off = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=False)
    try:
        result = call(probe, client, SetParameters.Request(parameters=[Parameter(name="imputed_std", value=off)]))
        assert result.results[0].successful, result.results[0].reason
        assert spin_until(probe, lambda: json.loads(record["info"][-1][1].details_json)["imputed_std"]["modalities"]
                          == [], 5)
        switched = time.monotonic()
        count = len(record["imputed_audio"])
        assert spin_until(probe, lambda: len(record["imputed_audio"]) > count + 10, 10)
        assert not [t for t, _ in record["audio_std"] if t > switched + 0.5]
    finally:
        on = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=True)
        call(probe, client, SetParameters.Request(parameters=[Parameter(name="imputed_std", value=on)]))


def test_malformed_messages_are_counted_and_the_node_keeps_publishing(ros):
    record = ros["record"]
    assert ros["node"].poll() is None, "the node died"
    statuses = {s.name: s for s in record["diagnostics"][-1][1].status}
    values = {name: {kv.key: kv.value for kv in s.values} for name, s in statuses.items()}
    assert int(values["/mdgm_fusion: camera"]["rejected_encoding"]) >= 3
    assert int(values["/mdgm_fusion: joints"]["rejected_unknown_joints"]) >= 3
    assert int(values["/mdgm_fusion: audio"]["rejected_non_finite"]) >= 3
    assert int(values["/mdgm_fusion: tactile"]["rejected_size"]) >= 3
    assert float(values["/mdgm_fusion: camera"]["rate_hz"]) > 20
    assert values["/mdgm_fusion: audio"]["present"] == "False"
    assert statuses["/mdgm_fusion: audio"].level != b"\x00"              # WARN: missing
    assert statuses["/mdgm_fusion: model"].message == "publishing"
    last_latent = record["latent"][-1][0]
    assert time.monotonic() - last_latent < 2.0
    assert "rejected camera message (encoding" in (ros["tmp"] / "node.log").read_text()


def test_model_info_is_latched(ros):
    info = ros["record"]["info"][-1][1]
    assert info.latent_dim == 8 and info.fusion == "poe" and info.model_id.startswith("test8-")
    assert list(info.modalities) == ["camera", "joints", "audio", "tactile"]
    assert (info.imputed_topics[2] == "/mdgm_fusion/imputed/audio"
            and info.imputed_types[2] == "mdgm_ros/msg/ImputedArray")
    details = json.loads(info.details_json)
    assert details["latent"]["type"] == "mdgm_ros/msg/Latent" and "~/mirror/latent" in details["mirrors"]


def _set_bundle(ros, path):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    probe = ros["probe"]
    client = probe.create_client(SetParameters, "/mdgm_fusion/set_parameters")
    value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(path))
    result = call(probe, client, SetParameters.Request(parameters=[Parameter(name="bundle", value=value)]))
    assert result.results[0].successful


def _reload(ros):
    from std_srvs.srv import Trigger
    client = ros["probe"].create_client(Trigger, "/mdgm_fusion/reload_model")
    return call(ros["probe"], client, Trigger.Request(), timeout=30)


def _latent_dims_after(ros, since: float, count: int = 5) -> set[int]:
    record = ros["record"]
    spin_until(ros["probe"], lambda: sum(1 for t, _ in record["latent"] if t > since) >= count, 10)
    return {len(m.mean) for t, m in record["latent"] if t > since}


def test_reload_model_swaps_and_a_bad_bundle_is_refused(ros):
    _set_bundle(ros, ros["bundles"]["b"])
    response = _reload(ros)
    assert response.success, response.message
    swapped = time.monotonic()
    assert _latent_dims_after(ros, swapped) == {6}
    spin_until(ros["probe"], lambda: ros["record"]["info"][-1][1].latent_dim == 6, 5)
    assert ros["record"]["info"][-1][1].model_id.startswith("test6-")

    broken = ros["tmp"] / "broken"
    broken.mkdir()
    _set_bundle(ros, broken)
    response = _reload(ros)
    assert not response.success and "manifest.json is missing" in response.message
    assert _latent_dims_after(ros, time.monotonic()) == {6}, "the old model must keep running"


def test_lifecycle_transitions(ros):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    probe, record = ros["probe"], ros["record"]
    change = probe.create_client(ChangeState, "/mdgm_fusion/change_state")
    get = probe.create_client(GetState, "/mdgm_fusion/get_state")

    def transition(tid):
        assert call(probe, change, ChangeState.Request(transition=Transition(id=tid))).success

    def state():
        return call(probe, get, GetState.Request()).current_state.label

    assert state() == "active"
    transition(Transition.TRANSITION_DEACTIVATE)
    assert state() == "inactive"
    spin_for(probe, 0.5)
    quiet_since = time.monotonic()
    spin_for(probe, 1.0)
    assert not [t for t, _ in record["latent"] if t > quiet_since], "an inactive node must not publish"
    transition(Transition.TRANSITION_CLEANUP)
    assert state() == "unconfigured"
    _set_bundle(ros, ros["bundles"]["a"])
    transition(Transition.TRANSITION_CONFIGURE)
    transition(Transition.TRANSITION_ACTIVATE)
    assert state() == "active"
    assert _latent_dims_after(ros, time.monotonic()) == {8}

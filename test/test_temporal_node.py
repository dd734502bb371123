"""The fusion node with a temporal bundle, over real DDS in separate processes: it carries the filter
state between frames (what a stateless node cannot do), resets it on a backwards clock jump, and
publishes ~/latent_prediction stamped with the source stamp; with the networks in torch and in
onnxruntime (``engine``), which must give the same steps.

The test process is the simulator: it publishes /clock (the node runs on sim time) and the camera, whose
frame is always the same, so the node's k-th step since a reset must equal the k-th step of a filter run
here on that frame; the other streams stay silent (imputed). The bundle is a small untrained temporal
model whose transition is perturbed so that it moves the state.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from ros_env import spin_for, spin_until, start, stop

STEP_S = 1.0 / 30.0
HORIZON = 3
NS = 1_000_000_000


def _temporal_bundle(folder):
    from mdgm_ros.core import ModelConfig, MultimodalVAE, default_robot_modalities, save_bundle
    from mdgm_ros.core.families.temporal import TRANSITION
    from mdgm_ros.training.trainer import export_onnx

    torch.manual_seed(0)
    model = MultimodalVAE(ModelConfig(tuple(default_robot_modalities()), latent_dim=4, family="temporal")).eval()
    with torch.no_grad():
        for p in model.extra[TRANSITION].parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = save_bundle(folder / "temporal_bundle", model, None, name="temporal",
                       extra={"temporal": {"step_s": STEP_S}}, attach=lambda target: export_onnx(model, target))
    return model, path


def _expected_steps(model, raw_camera: np.ndarray, steps: int):
    """The k-th filter step (k = 1..steps) on the camera frame alone, from a fresh state."""
    from mdgm_ros.core.engine.filter import TemporalFilter
    live = TemporalFilter(model, horizon=HORIZON)
    mask = torch.tensor([[True, False, False, False]])
    raw = {"camera": torch.from_numpy(raw_camera)[None]}
    out = {}
    for k in range(1, steps + 1):
        r = live(raw, mask)
        out[k] = (r.latent_mean[0].numpy(), r.latent_std[0].numpy(), r.predicted_mean[0].numpy())
    return out


def _ns(stamp) -> int:
    return stamp.sec * NS + stamp.nanosec


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def temporal_run(tmp_path_factory, request):
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from mdgm_ros.msg import Latent, LatentPrediction, ModelInfo
    from mdgm_ros.ros.outputs import LATCHED_INFO
    from mdgm_ros.ros.processes import private_ros_env
    from mdgm_ros.streams import bridge

    tmp = tmp_path_factory.mktemp("temporal_node")
    model, bundle = _temporal_bundle(tmp)
    frame = (np.random.default_rng(0).integers(0, 256, (3, 64, 64)) / 255.0).astype(np.float32)
    raw_camera = bridge.image_to_array(bridge.array_to_image(frame, 0), (3, 64, 64))
    env = private_ros_env()
    node = start("mdgm_ros.ros.fusion_node", "--ros-args", "-p", f"bundle:={bundle}", "-p", "use_sim_time:=true",
                 "-p", f"prediction_horizon:={HORIZON}", "-p", f"engine:={request.param}", env=env,
                 log=tmp / "node.log")
    rclpy.init()
    probe = rclpy.create_node("temporal_probe")
    record = {"latent": [], "prediction": [], "info": []}
    probe.create_subscription(ModelInfo, "/mdgm_fusion/model_info", record["info"].append, LATCHED_INFO)
    reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    probe.create_subscription(Latent, "/mdgm_fusion/latent", record["latent"].append, reliable)
    probe.create_subscription(LatentPrediction, "/mdgm_fusion/latent_prediction", record["prediction"].append,
                              reliable)
    clock = probe.create_publisher(Clock, "/clock", 10)
    camera = probe.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)

    def play(start_s: float, frames: int) -> None:
        for i in range(frames):
            stamp = int((start_s + i * STEP_S) * NS)
            clock.publish(Clock(clock=bridge.ns_to_stamp(stamp)))
            camera.publish(bridge.array_to_image(frame, stamp, "camera"))
            spin_for(probe, STEP_S)

    try:
        # wait until the node runs and hears us (its first latents), then start the measured time line
        deadline = time.monotonic() + 90
        while not record["latent"] and time.monotonic() < deadline:
            play(10.0 + (90 - (deadline - time.monotonic())), 3)
        assert record["latent"], (tmp / "node.log").read_text()[-3000:]
        spin_for(probe, 1.0)
        record["latent"].clear()
        record["prediction"].clear()
        play(100.0, 40)                                   # t = 100 s .. 101.3 s
        play(50.0, 20)                                    # the clock jumps back 50 s
        spin_until(probe, lambda: any(_ns(m.header.stamp) >= 50 * NS + 15 * STEP_S * NS and
                                      _ns(m.header.stamp) < 100 * NS for m in record["latent"]), 10)
        yield {"record": record, "expected": _expected_steps(model, raw_camera, 40), "log": tmp / "node.log",
               "node": node, "play": play, "engine": request.param}
    finally:
        stop(node)
        probe.destroy_node()
        rclpy.try_shutdown()


def _part(latents, low_s, high_s):
    return [m for m in latents if low_s * NS <= _ns(m.header.stamp) < high_s * NS]


def test_the_node_keeps_its_state_between_frames(temporal_run):
    expected, latents = temporal_run["expected"], temporal_run["record"]["latent"]
    first = _part(latents, 100, 102)
    assert len(first) > 20, temporal_run["log"].read_text()[-2000:]
    # a stateless node gives step 1's answer to every identical frame: memory makes step 10 another one
    assert np.abs(expected[10][1] - expected[1][1]).max() > 1e-2
    steps = [m.step for m in first]
    assert steps == sorted(steps) and max(steps) >= 20
    for msg in first:
        mean, std, _ = expected[msg.step]
        np.testing.assert_allclose(msg.mean, mean, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(msg.std, std, atol=1e-4, rtol=1e-4)
        assert list(msg.present) == [True, False, False, False]


def test_a_backwards_clock_jump_resets_the_state(temporal_run):
    expected, latents = temporal_run["expected"], temporal_run["record"]["latent"]
    after = _part(latents, 50, 51)
    assert len(after) > 5
    steps = [m.step for m in after]
    # the first frame after the jump starts a new time line: steps count again from 1, values as fresh
    assert min(steps) <= 2 and max(steps) < 25, steps
    for msg in after:
        np.testing.assert_allclose(msg.std, expected[msg.step][1], atol=1e-4, rtol=1e-4)
    assert "temporal state reset" in temporal_run["log"].read_text()


def test_latent_prediction_has_the_source_stamp_and_the_horizon(temporal_run):
    record, expected = temporal_run["record"], temporal_run["expected"]
    by_stamp = {_ns(m.header.stamp): m for m in _part(record["latent"], 100, 102)}
    predictions = [p for p in record["prediction"] if _ns(p.header.stamp) in by_stamp]
    assert len(predictions) > 10
    step_ns = int(STEP_S * 1e9)
    for p in predictions:
        stamp = _ns(p.header.stamp)
        assert p.horizon == HORIZON and p.latent_dim == 4 and len(p.mean) == len(p.std) == HORIZON * 4
        assert [_ns(s) for s in p.stamps] == [stamp + (k + 1) * step_ns for k in range(HORIZON)]
        step = by_stamp[stamp].step
        np.testing.assert_allclose(np.reshape(p.mean, (HORIZON, 4)), expected[step][2], atol=1e-4, rtol=1e-4)
        assert all(s > 0 for s in p.std)
    details = json.loads(record["info"][-1].details_json)["temporal"]
    assert details["latent_prediction"]["horizon"] == HORIZON and details["latent_prediction"]["step_s"] == STEP_S


def test_sigint_ends_the_node_cleanly_while_it_is_fusing(temporal_run):
    """Ctrl-C (what launch sends) in the middle of the stream: exit 0, and no step fails on the way out."""
    node = temporal_run["node"]
    temporal_run["play"](200.0, 10)
    node.send_signal(signal.SIGINT)
    temporal_run["play"](200.0 + 10 * STEP_S, 5)        # frames keep coming while it stops
    try:
        status = node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the node did not stop within 60 s of SIGINT")
    log = temporal_run["log"].read_text()
    assert status == 0, log[-2000:]
    assert ("networks in onnxruntime" in log) == (temporal_run["engine"] == "onnxruntime")
    assert "fusion step failed" not in log and "Traceback" not in log

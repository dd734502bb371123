"""The fusion node as a user starts it (`ros2 run mdgm_ros fusion_node`, no parameters), over real DDS.

One fusion node process with no parameters (the shipped models/default), the synthetic joints, audio and
tactile streams in another process, and this process as the camera (so it can stop and restart it) and
as the client of topics, diagnostics and parameters. Bounds are generous: a loaded 2-core machine.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from ros_env import ROOT, private_ros_env, spin_for, spin_until, start, stop

CAMERA_HZ = 30.0


class Camera:
    """Publishes 64x64 rgb8 frames stamped now while ``on``."""

    def __init__(self, node, topic: str = "/camera/image_raw"):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from mdgm_ros.streams import bridge
        self.on = True
        self.node = node
        self.pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.frame = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
        self.make = bridge.array_to_image
        node.create_timer(1.0 / CAMERA_HZ, self._tick)

    def _tick(self) -> None:
        if self.on:
            self.pub.publish(self.make(self.frame, self.node.get_clock().now().nanoseconds, "camera"))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from mdgm_ros.msg import Latent

    tmp = tmp_path_factory.mktemp("runtime")
    env = private_ros_env()
    node = start("mdgm_ros.ros.fusion_node", env=env, log=tmp / "node.log")
    streams = start("mdgm_ros.ros.synthetic_streams", "--ros-args", "-r", "/camera/image_raw:=/unused/camera",
                    env=env, log=tmp / "streams.log")
    rclpy.init()
    probe = rclpy.create_node("runtime_probe")
    record = {"latent": [], "diagnostics": []}
    probe.create_subscription(Latent, "/mdgm_fusion/latent",
                              lambda m: record["latent"].append((time.monotonic(), m)), 50)
    probe.create_subscription(DiagnosticArray, "/diagnostics",
                              lambda m: record["diagnostics"].append((time.monotonic(), m)), 50)
    camera = Camera(probe)
    try:
        assert spin_until(probe, lambda: len(record["latent"]) > 10, 90), (tmp / "node.log").read_text()[-3000:]
        yield {"probe": probe, "record": record, "camera": camera, "node": node, "tmp": tmp, "env": env}
    finally:
        stop(streams)
        stop(node)
        probe.destroy_node()
        rclpy.try_shutdown()


def _statuses(msg) -> dict:
    return {s.name: s for s in msg.status}


def _wait_status(runtime, since: float, predicate, timeout: float):
    """The receive time and statuses of the first /diagnostics message after ``since`` that satisfies
    ``predicate(statuses)``, or None."""
    found = []

    def check():
        for t, msg in runtime["record"]["diagnostics"]:
            statuses = _statuses(msg)
            if t > since and "/mdgm_fusion: model" in statuses and predicate(statuses):
                found.append((t, statuses))
                return True
        return False
    spin_until(runtime["probe"], check, timeout)
    return found[0] if found else None


def test_no_parameters_runs_the_shipped_default_and_says_so(runtime):
    first_line = (runtime["tmp"] / "node.log").read_text().splitlines()[0]
    assert f"bundle {ROOT / 'models' / 'default'} (default: the source tree)" in first_line, first_line
    manifest = json.loads((ROOT / "models" / "default" / "manifest.json").read_text())
    latent = runtime["record"]["latent"][-1][1]
    assert latent.model_id == manifest["model_id"] and len(latent.mean) > 0
    assert list(latent.modalities) == ["camera", "joints", "audio", "tactile"] and latent.present[0]
    log = (runtime["tmp"] / "node.log").read_text()
    config = json.loads((ROOT / "models" / "default" / "normalization.json").read_text())
    calibration = json.loads((ROOT / "models" / "default" / "calibration.json").read_text())
    # a bundle trained before training bounds or the predictive std's calibration says what it does instead
    assert ("has no training bounds for joints, tactile" in log) == ("low" not in config["joints"]), log[-2000:]
    assert ("did not calibrate the predictive std" in log) == ("predictive_scale" not in calibration), log[-2000:]
    assert ("measured no fallback table" in log) == ("fallback" not in calibration), log[-2000:]


def test_diagnostics_go_stale_within_a_window_when_the_camera_stops_and_the_model_imputes_it(runtime):
    """With no parameters the node aligns as the shipped default was trained (a 30 Hz timer): when the
    camera stops its stream goes STALE within a window while the model keeps publishing, the camera imputed."""
    from diagnostic_msgs.msg import DiagnosticStatus as S
    from sensor_msgs.msg import Image
    ok = _wait_status(runtime, time.monotonic(), lambda s: s["/mdgm_fusion: camera"].level == S.OK
                      and s["/mdgm_fusion: model"].level == S.OK, 20)
    assert ok, [(s.name, s.message) for s in runtime["record"]["diagnostics"][-1][1].status]
    window = period = 1.0                                   # diagnostics_window, diagnostics_period defaults
    imputed = []
    runtime["probe"].create_subscription(Image, "/mdgm_fusion/imputed/camera", imputed.append, 10)
    runtime["camera"].on = False
    stopped = time.monotonic()
    down = _wait_status(runtime, stopped, lambda s: s["/mdgm_fusion: camera"].level == S.STALE, 15)
    assert down, [(s.name, s.level, s.message) for s in runtime["record"]["diagnostics"][-1][1].status]
    # one window, plus one diagnostics period to report it, plus slack for a loaded machine
    assert down[0] - stopped <= window + period + 1.5, down[0] - stopped
    assert down[1]["/mdgm_fusion: joints"].level == S.OK                # the other streams still flow
    assert "nothing received" in down[1]["/mdgm_fusion: camera"].message
    assert down[1]["/mdgm_fusion: model"].level == S.OK, down[1]["/mdgm_fusion: model"].message
    assert spin_until(runtime["probe"], lambda: len(imputed) >= 3, 10), "no camera imputation during the outage"
    runtime["camera"].on = True
    up = _wait_status(runtime, time.monotonic(), lambda s: s["/mdgm_fusion: camera"].level == S.OK
                      and s["/mdgm_fusion: model"].level == S.OK, 20)
    assert up, [(s.name, s.level, s.message) for s in runtime["record"]["diagnostics"][-1][1].status]
    anomaly = up[1]["/mdgm_fusion: anomaly"]
    assert anomaly.level == S.OK and (anomaly.message == "normal" or anomaly.message.startswith("anomalous"))


def _set(runtime, node: str, **values):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter as Param
    from ros_env import call
    probe = runtime["probe"]
    client = probe.create_client(SetParameters, f"{node}/set_parameters")
    request = SetParameters.Request(parameters=[Param(name.replace("__", "."), value=value).to_parameter_msg()
                                                for name, value in values.items()])
    return call(probe, client, request).results


def test_invalid_parameters_are_refused_with_the_reason_and_a_live_one_takes_effect(runtime):
    from sensor_msgs.msg import Image
    node = "/mdgm_fusion"
    refused = {"anchor": "lidar", "device": "quantum", "camera__staleness": -1.0, "camera__topic": "/other/camera",
               "threads": 4, "precision": "fp8"}
    reasons = {name: _set(runtime, node, **{name: value})[0] for name, value in refused.items()}
    assert not any(r.successful for r in reasons.values()), reasons
    assert "anchor 'lidar' is not one of the modalities" in reasons["anchor"].reason
    assert "quantum" in reasons["device"].reason
    assert reasons["camera__staleness"].reason                           # out of the descriptor's range
    assert "cannot change while a model is loaded" in reasons["camera__topic"].reason
    assert "threads" in reasons["threads"].reason
    assert "precision 'fp8' is not one of fp32 | bf16 | fp16 | auto" in reasons["precision"].reason
    # impute_present is live: the node starts publishing reconstructions of the (present) camera
    probe, frames = runtime["probe"], []
    probe.create_subscription(Image, f"{node}/imputed/camera", frames.append, 10)
    spin_for(probe, 1.0)
    assert not frames, "the camera is present: no imputation before the change"
    assert _set(runtime, node, impute_present=True)[0].successful
    assert spin_until(probe, lambda: len(frames) >= 3, 15)
    assert _set(runtime, node, impute_present=False)[0].successful


def test_a_wrong_input_type_gives_one_warning_and_a_diagnostics_entry(runtime):
    from std_msgs.msg import Int16MultiArray
    probe = runtime["probe"]
    wrong = probe.create_publisher(Int16MultiArray, "/audio", 10)     # the node expects Float32MultiArray
    log = runtime["tmp"] / "node.log"
    text = "a publisher on /audio has another message type"
    assert spin_until(probe, lambda: text in log.read_text(), 30), log.read_text()[-2000:]
    entry = _wait_status(runtime, time.monotonic(), lambda s: any(
        kv.key == "incompatible_type" for kv in s["/mdgm_fusion: audio"].values), 10)
    assert entry, [(s.name, s.message) for s in runtime["record"]["diagnostics"][-1][1].status]
    spin_for(probe, 1.0)
    assert log.read_text().count(text) == 1                             # one WARN, then counted
    probe.destroy_publisher(wrong)


def test_a_namespaced_node_subscribes_to_namespaced_inputs(runtime):
    """`-r __ns:=/left` moves inputs and outputs; diagnostics names carry the namespace; a typo warns.
    This node also runs its networks in bf16 (``precision``), as a Jetson would in fp16."""
    from mdgm_ros.msg import Latent
    probe, tmp = runtime["probe"], runtime["tmp"]
    left = start("mdgm_ros.ros.fusion_node", "--ros-args", "-r", "__ns:=/left", "-p", "camera.stalness:=0.2",
                 "-p", "precision:=bf16", env=runtime["env"], log=tmp / "left.log")
    try:
        latents = []
        probe.create_subscription(Latent, "/left/mdgm_fusion/latent", latents.append, 10)
        Camera(probe, "/left/camera/image_raw")
        assert spin_until(probe, lambda: len(latents) >= 3, 90), (tmp / "left.log").read_text()[-2000:]
        assert list(latents[-1].present) == [True, False, False, False]   # /left has only a camera
        assert (np.isfinite(latents[-1].mean).all()
                and "networks under autocast (bf16)" in (tmp / "left.log").read_text())
        named = _wait_status(runtime, time.monotonic(), lambda s: "/left/mdgm_fusion: camera" in s, 10) or \
            [(t, {s.name: s for s in m.status}) for t, m in runtime["record"]["diagnostics"]
             if any(s.name.startswith("/left/mdgm_fusion: ") for s in m.status)]
        assert named, "no diagnostics from /left/mdgm_fusion"
        assert "unknown parameters ignored (typo or old name?): camera.stalness" in (tmp / "left.log").read_text()
    finally:
        stop(left)

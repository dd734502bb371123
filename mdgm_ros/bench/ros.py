"""``mdgm-ros bench ros``: the fusion node end to end over DDS at the design card's stream rates.

The fusion node (its own messages, /diagnostics on, config/fusion.yaml) and the synthetic stream
publisher run in their own processes on a private ROS_DOMAIN_ID; this process subscribes to the camera,
to ``~/latent`` (mdgm_ros/Latent) and to ``/diagnostics``. Latency of each latent is measured two ways
from its source stamp (the camera frame's header): to its publication (the DDS source timestamp the
fusion node's writer put on it) and to its arrival here (one more DDS hop).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config_files import config_path
from ..ros.processes import private_ros_env, stop_process

TARGET_P99_MS = 5.0         # stamp -> arrival at a subscriber, p99


def bench_bundle(folder: Path) -> Path:
    """A four-stream model at the design card's sizes (untrained weights time the same as trained ones),
    saved as a bundle in ``folder``: what ``bench ros --bundle bench`` and ``bench soak`` without
    ``--bundle`` run."""
    import torch

    from ..core import calibrate_anomaly, save_bundle
    from ..core.engine import loop as training
    from .models import prepared_model
    model, (_, feats, mask) = prepared_model("mvae", torch.device("cpu"))
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    return save_bundle(folder / "bench_model", model, calibration, name="bench")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class _Probe:
    """Subscriptions of the benchmark process: camera stamps, latents (stamp, publication, arrival), diagnostics."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from ..msg import Latent
        self.node = node
        self.camera: list[tuple[float, int, int]] = []
        self.latents: list[tuple[float, int, int, int]] = []
        self.diagnostics = 0
        self.node_step_ms = float("nan")
        node.create_subscription(Image, "/camera/image_raw", self._on_camera, qos_profile_sensor_data)
        node.create_subscription(Latent, "/mdgm_fusion/latent", self._on_latent, 100)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_camera(self, msg) -> None:
        self.camera.append((time.monotonic(), _stamp_ns(msg), time.time_ns()))

    def _on_latent(self, msg, info) -> None:
        self.latents.append((time.monotonic(), _stamp_ns(msg), int(info["source_timestamp"]), time.time_ns()))

    def _on_diagnostics(self, msg) -> None:
        ours = [s for s in msg.status if s.name.startswith("/mdgm_fusion")]
        self.diagnostics += bool(ours)
        for status in ours:   # the node's own p50 of one fusion step (alignment, inference, publication)
            values = {kv.key: kv.value for kv in status.values}
            if "inference_p50_ms" in values:
                self.node_step_ms = float(values["inference_p50_ms"])

    def spin(self, seconds: float) -> None:
        import rclpy
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def wait_for_latents(self, timeout: float) -> None:
        import rclpy
        end = time.monotonic() + timeout
        while not self.latents and time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.1)
        if not self.latents:
            raise RuntimeError(f"the fusion node published no latent within {timeout:.0f} s")


BENCH_BUNDLE = "bench"        # ``--bundle bench``: the untrained design-card-sized per-frame model


def bench_ros(duration: float = 20.0, warmup: float = 5.0, bundle: str = "", device: str = "auto",
              precision: str = "fp32") -> dict[str, Any]:
    """The node runs ``bundle``: '' = the shipped models/default (its temporal filter and 10-step
    prediction, as the node runs with no parameters), ``bench`` = the design-card-sized per-frame model,
    else a bundle folder of the four default streams. It is anchored on the camera (config/fusion.yaml),
    so that every latent carries a sensor stamp to measure from; ``device`` and ``precision`` are the
    node's parameters."""
    env = private_ros_env()
    import rclpy

    with tempfile.TemporaryDirectory() as tmp:
        chosen = str(bench_bundle(Path(tmp))) if bundle == BENCH_BUNDLE else bundle
        overrides = {"bundle": chosen, "anchor": "camera", "device": device, "precision": precision}
        node = subprocess.Popen([sys.executable, "-m", "mdgm_ros.ros.fusion_node", "--ros-args", "--params-file",
                                 str(config_path("fusion.yaml")),
                                 *[arg for key, value in overrides.items() if value
                                   for arg in ("-p", f"{key}:={value}")]],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        streams = subprocess.Popen([sys.executable, "-m", "mdgm_ros.ros.synthetic_streams"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rclpy.init()
        probe_node = rclpy.create_node("bench_probe")
        try:
            probe = _Probe(probe_node)
            probe.wait_for_latents(60.0)
            probe.spin(warmup)
            start, cpu_start = time.monotonic(), cpu_seconds(node.pid)
            probe.spin(duration)
            stop, cpu_stop = time.monotonic(), cpu_seconds(node.pid)
        finally:
            stop_process(streams)
            stop_process(node)
            probe_node.destroy_node()
            rclpy.try_shutdown()
    return {**_summary(probe, start, stop, cpu_stop - cpu_start), "bundle": bundle or "models/default",
            "device": device, "precision": precision}


def _percentiles(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {f"{prefix}_p50_ms": round(float(np.percentile(values, 50)), 3),
            f"{prefix}_p99_ms": round(float(np.percentile(values, 99)), 3),
            f"{prefix}_max_ms": round(float(values.max()), 3)}


def _summary(probe: _Probe, start: float, stop: float, cpu_seconds: float) -> dict[str, Any]:
    frames = {s for t, s, _ in probe.camera if start <= t <= stop - 0.5}
    # the camera frame itself: its stamp -> its arrival here (the publisher's work after stamping and one
    # DDS hop of a 12 KB image), the floor under the latent's arrival
    camera = np.array([(recv - s) / 1e6 for t, s, recv in probe.camera if start <= t <= stop])
    window = [row for row in probe.latents if start <= row[0] <= stop]
    if not window:
        raise RuntimeError("no latent arrived during the measured window")
    delivered = len(frames & {s for _, s, _, _ in window}) / max(len(frames), 1)
    published = np.array([(pub - s) / 1e6 for _, s, pub, _ in window])
    arrived = np.array([(recv - s) / 1e6 for _, s, _, recv in window])
    third = max(len(arrived) // 3, 1)
    drift = float(np.median(arrived[-third:]) - np.median(arrived[:third]))
    p99 = float(np.percentile(arrived, 99))
    return {"benchmark": "ros", "duration_s": round(stop - start, 1),
            "rates_hz": {"camera": 30, "joints": 200, "audio": 50, "tactile": 100},
            "messages": "mdgm_ros/Latent", "diagnostics_messages": probe.diagnostics,
            "camera_frames": len(frames), "latents": len(window), "delivered_fraction": round(delivered, 4),
            # source stamp -> the fusion node's publication (DDS source timestamp of the latent)
            **_percentiles("latency", published),
            # source stamp -> arrival in this process (includes one more DDS hop)
            **_percentiles("arrival_latency", arrived),
            **_percentiles("camera_arrival_latency", camera),
            "node_step_p50_ms": round(probe.node_step_ms, 3) if np.isfinite(probe.node_step_ms) else None,
            "latency_drift_ms": round(drift, 3), "backlog_growth": bool(drift > 5.0),
            "node_cpu_percent_of_one_core": round(100 * cpu_seconds / (stop - start), 1),
            "target": {"arrival_latency_p99_ms": TARGET_P99_MS}, "target_met": p99 <= TARGET_P99_MS}

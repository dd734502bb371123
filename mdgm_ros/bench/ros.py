"""``mdgm-ros bench ros``: the fusion node end to end over DDS at the design card's stream rates.

The fusion node and the synthetic stream publisher run in their own processes on a private
ROS_DOMAIN_ID; this process subscribes to the camera and to ``~/latent``. Latency is measured from the
anchor's source stamp to the latent's arrival here (so it includes one more DDS hop than publication).
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config_files import config_path

def _bench_bundle(folder: Path) -> Path:
    """A four-stream model at the design card's sizes (untrained weights time the same as trained ones)."""
    import torch

    from .models import _prepared_model
    from ..core import calibrate_anomaly, save_bundle
    from ..core import training
    model, (_, feats, mask) = _prepared_model("mvae", torch.device("cpu"))
    calibration = calibrate_anomaly(model, training.normalize_features(model, feats), mask)
    return save_bundle(folder / "bench_model", model, calibration, name="bench")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_ros(duration: float = 20.0, warmup: float = 5.0) -> dict[str, Any]:
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(120, 230))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    with tempfile.TemporaryDirectory() as tmp:
        bundle = _bench_bundle(Path(tmp))
        node = subprocess.Popen([sys.executable, "-m", "mdgm_ros.ros.fusion_node", "--ros-args", "--params-file",
                                 str(config_path("fusion.yaml")), "-p", f"bundle:={bundle}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        streams = subprocess.Popen([sys.executable, "-m", "mdgm_ros.ros.synthetic_streams"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rclpy.init()
        probe = rclpy.create_node("bench_probe")
        camera: list[tuple[float, int]] = []
        latents: list[tuple[float, int, int]] = []

        def stamp(msg) -> int:
            return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

        probe.create_subscription(Image, "/camera/image_raw", lambda m: camera.append((time.monotonic(), stamp(m))),
                                  qos_profile_sensor_data)
        probe.create_subscription(JointState, "/mdgm_fusion/latent",
                                  lambda m: latents.append((time.monotonic(), stamp(m), time.time_ns())), 100)
        try:
            end = time.monotonic() + 60
            while not latents and time.monotonic() < end:
                rclpy.spin_once(probe, timeout_sec=0.1)
            if not latents:
                raise RuntimeError("the fusion node published nothing within 60 s")
            _spin(probe, warmup)
            start, cpu_start = time.monotonic(), _cpu_seconds(node.pid)
            _spin(probe, duration)
            stop, cpu_stop = time.monotonic(), _cpu_seconds(node.pid)
        finally:
            streams.terminate()
            node.terminate()
            streams.wait(timeout=10)
            node.wait(timeout=10)
            probe.destroy_node()
            rclpy.try_shutdown()
    return _summary(camera, latents, start, stop, cpu_stop - cpu_start)


def _spin(node, seconds: float) -> None:
    import rclpy
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)


def _summary(camera, latents, start: float, stop: float, cpu_seconds: float) -> dict[str, Any]:
    frames = {s for t, s in camera if start <= t <= stop - 0.5}
    window = [(t, s, recv) for t, s, recv in latents if start <= t <= stop]
    delivered = len(frames & {s for _, s, _ in window}) / max(len(frames), 1)
    latency = np.array([(recv - s) / 1e6 for _, s, recv in window])
    third = max(len(latency) // 3, 1)
    drift = float(np.median(latency[-third:]) - np.median(latency[:third]))
    return {"benchmark": "ros", "duration_s": round(stop - start, 1),
            "rates_hz": {"camera": 30, "joints": 200, "audio": 50, "tactile": 100},
            "camera_frames": len(frames), "latents": len(window), "delivered_fraction": round(delivered, 4),
            "latency_p50_ms": round(float(np.percentile(latency, 50)), 3),
            "latency_p99_ms": round(float(np.percentile(latency, 99)), 3),
            "latency_max_ms": round(float(latency.max()), 3),
            "latency_drift_ms": round(drift, 3), "backlog_growth": bool(drift > 5.0),
            "node_cpu_percent_of_one_core": round(100 * cpu_seconds / (stop - start), 1),
            "target": {"latency_p99_ms": 15.0}}

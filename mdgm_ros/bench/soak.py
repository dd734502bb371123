"""``mdgm-ros bench soak``: the fusion node for N minutes on synthetic streams with malformed input.

The node and ``synthetic_streams --malformed --hostile`` (one bad message per stream per second, and
four hostile messages per second: odd stamps, huge values, a 1 MB frame_id, ...) run
in their own processes on a private ROS_DOMAIN_ID; this process subscribes to the camera and to
``~/latent`` and samples the node's resident memory (``/proc/<pid>/status`` VmRSS) every few seconds.
Reported: the RSS slope after the warm-up (least squares, MB/min) and per half, latency p50/p99 per
tenth of the run and their drift (last tenth minus first), the fraction of the valid anchor frames
answered (malformed and hostile frames are rejected by design and counted apart), and the node's
reject and error counters from its last ``/diagnostics``. The target: RSS growth <= 0.5 MB/min
after the first minute, no p99 drift, >= 99 % of anchor frames answered.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config_files import config_path
from ..ros.processes import private_ros_env, stop_process
from .memory import status_mb
from .ros import bench_bundle, cpu_seconds

RSS_PERIOD_S = 5.0


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return float("nan")
    t, mb = np.array(samples, dtype=float).T
    return float(np.polyfit(t / 60.0, mb, 1)[0])


def bench_soak(minutes: float = 5.0, warmup_s: float = 60.0, bundle: str | None = None, hostile: bool = True,
               log: Any = None) -> dict[str, Any]:
    env = private_ros_env()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from ..msg import Latent

    duration = minutes * 60.0
    with tempfile.TemporaryDirectory() as tmp:
        model = bundle or str(bench_bundle(Path(tmp)))
        node = subprocess.Popen([sys.executable, "-m", "mdgm_ros.ros.fusion_node", "--ros-args", "--params-file",
                                 str(config_path("fusion.yaml")), "-p", f"bundle:={model}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        extra = ["--hostile"] if hostile else []
        streams = subprocess.Popen([sys.executable, "-m", "mdgm_ros.ros.synthetic_streams", "--malformed", *extra],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rclpy.init()
        probe = rclpy.create_node("soak_probe")
        record: dict[str, list] = {"camera": [], "latent": [], "rss": [], "diagnostics": []}

        def stamp(msg) -> int:
            return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

        probe.create_subscription(Image, "/camera/image_raw", lambda m: _note_frame(record, m, stamp(m)),
                                  qos_profile_sensor_data)
        probe.create_subscription(Latent, "/mdgm_fusion/latent",
                                  lambda m: record["latent"].append((time.monotonic(), stamp(m), time.time_ns())), 100)
        probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: record["diagnostics"].append(m), 10)
        try:
            _wait_first(probe, record, node)
            start, cpu_start = time.monotonic(), cpu_seconds(node.pid)
            next_rss = start
            while time.monotonic() - start < duration and node.poll() is None:
                rclpy.spin_once(probe, timeout_sec=0.05)
                if time.monotonic() >= next_rss:
                    record["rss"].append((time.monotonic() - start, rss_mb(node.pid)))
                    next_rss += RSS_PERIOD_S
                    if log and len(record["rss"]) % 12 == 0:
                        log(f"soak {record['rss'][-1][0] / 60:.1f} min: node RSS {record['rss'][-1][1]:.1f} MB")
                    record["diagnostics"] = record["diagnostics"][-50:]
            stop, cpu_stop = time.monotonic(), cpu_seconds(node.pid)
            alive = node.poll() is None
        finally:
            stop_process(streams)
            stop_process(node)
            probe.destroy_node()
            rclpy.try_shutdown()
    summary = _summary(record, start, stop, warmup_s, cpu_stop - cpu_start, alive)
    summary["malformed"] += " + four hostile messages per second (--hostile)" if hostile else ""
    return summary


def _note_frame(record: dict, msg, stamp_ns: int) -> None:
    """Anchor frames the node must answer: a supported encoding and a sane stamp (the malformed and
    hostile frames are rejected by design and counted apart)."""
    sane = 0 < stamp_ns and msg.header.stamp.nanosec < 1_000_000_000 and abs(stamp_ns - time.time_ns()) < 10**9
    if sane and msg.encoding == "rgb8":
        record["camera"].append((time.monotonic(), stamp_ns))
    else:
        record["odd_frames"] = record.get("odd_frames", 0) + 1


def _wait_first(probe, record, node) -> None:
    import rclpy
    end = time.monotonic() + 90
    while not record["latent"] and time.monotonic() < end and node.poll() is None:
        rclpy.spin_once(probe, timeout_sec=0.1)
    if not record["latent"]:
        raise RuntimeError("the fusion node published nothing within 90 s")


def _counters(diagnostics: list) -> dict[str, int]:
    """rejected_* / errors_* / callback_errors of the node's last /diagnostics, summed over its entries."""
    out: dict[str, int] = {}
    for array in reversed(diagnostics):
        statuses = [s for s in array.status if "mdgm_fusion" in s.name]
        if not statuses:
            continue
        for status in statuses:
            for kv in status.values:
                if kv.key.startswith(("rejected_", "errors_", "callback_errors", "buffer_resets")):
                    try:
                        out[kv.key] = out.get(kv.key, 0) + int(float(kv.value))
                    except ValueError:
                        pass
        return out
    return out


def _summary(record, start: float, stop: float, warmup_s: float, cpu_s: float, alive: bool) -> dict[str, Any]:
    rss = record["rss"]
    steady = [(t, mb) for t, mb in rss if t >= warmup_s]
    half = (warmup_s + (stop - start)) / 2
    frames = {s for t, s in record["camera"] if start + warmup_s <= t <= stop - 1.0}
    latents = [(t, s, recv) for t, s, recv in record["latent"] if start + warmup_s <= t <= stop]
    delivered = len(frames & {s for _, s, _ in latents}) / max(len(frames), 1)
    latency = np.array([(recv - s) / 1e6 for _, s, recv in latents]) if latents else np.array([np.nan])
    tenths = [chunk for chunk in np.array_split(latency, 10) if chunk.size]
    p99 = [round(float(np.percentile(c, 99)), 3) for c in tenths]
    p50 = [round(float(np.percentile(c, 50)), 3) for c in tenths]
    return {
        "benchmark": "soak", "duration_s": round(stop - start, 1), "warmup_s": warmup_s, "node_alive": alive,
        "malformed": "one per stream per second (synthetic_streams --malformed)",
        "rss_mb": {"start": round(rss[0][1], 1) if rss else None, "end": round(rss[-1][1], 1) if rss else None,
                   "after_warmup": round(steady[0][1], 1) if steady else None},
        "rss_slope_mb_per_min": round(slope_mb_per_min(steady), 3),
        "rss_slope_first_half": round(slope_mb_per_min([x for x in steady if x[0] < half]), 3),
        "rss_slope_second_half": round(slope_mb_per_min([x for x in steady if x[0] >= half]), 3),
        "latency_p50_ms_by_tenth": p50, "latency_p99_ms_by_tenth": p99,
        "latency_p99_drift_ms": round(p99[-1] - p99[0], 3) if len(p99) > 1 else None,
        "camera_frames": len(frames), "odd_camera_frames_sent": record.get("odd_frames", 0),
        "latents": len(latents), "delivered_fraction": round(delivered, 4),
        "node_counters": _counters(record["diagnostics"]),
        "node_cpu_percent_of_one_core": round(100 * cpu_s / max(stop - start, 1e-9), 1),
        "target": {"rss_slope_mb_per_min": 0.5, "delivered_fraction": 0.99},
    }

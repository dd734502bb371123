"""Helpers for tests over real DDS: a private ROS_DOMAIN_ID per run, processes, waiting."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mdgm_ros.ros.processes import private_ros_env, stop_process

__all__ = ["ROOT", "FusionRun", "call", "private_ros_env", "spin_for", "spin_until", "start", "stop"]

ROOT = Path(__file__).resolve().parents[1]


def start(module: str, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=handle,
                            stderr=subprocess.STDOUT)


stop = stop_process


def spin_until(node, predicate, timeout: float) -> bool:
    import rclpy
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
        if predicate():
            return True
    return False


def spin_for(node, seconds: float) -> None:
    spin_until(node, lambda: False, seconds)


def call(node, client, request, timeout: float = 10.0):
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f"service {client.srv_name} not available")
    future = client.call_async(request)
    if not spin_until(node, future.done, timeout):
        raise TimeoutError(f"service {client.srv_name} did not answer")
    return future.result()


class FusionRun:
    """A fusion node (the shipped params file and ``bundle``, plus ``node_args``) and the synthetic
    streams (``stream_args``; or another ``streams_module``, e.g. ``mdgm_ros`` with ``play BAG``) in
    child processes on a private ROS domain, with a probe node in this process. :meth:`stop` ends all
    three; ``with FusionRun.start(...) as run:`` does it on exit."""

    def __init__(self, node: subprocess.Popen, streams: subprocess.Popen, probe, env: dict[str, str], log: Path):
        self.node, self.streams, self.probe, self.env, self.log = node, streams, probe, env, log

    @classmethod
    def start(cls, bundle: Path | str, log_dir: Path, *node_args: str, stream_args: tuple[str, ...] = (),
              probe_name: str = "probe", params_file: Path | None = ROOT / "config" / "fusion.yaml",
              streams_module: str = "mdgm_ros.ros.synthetic_streams") -> "FusionRun":
        import rclpy
        env = private_ros_env()
        params = ["--params-file", str(params_file)] if params_file else []
        node = start("mdgm_ros.ros.fusion_node", "--ros-args", *params, "-p", f"bundle:={bundle}", *node_args,
                     env=env, log=log_dir / "node.log")
        streams = start(streams_module, *stream_args, env=env, log=log_dir / "streams.log")
        rclpy.init()
        return cls(node, streams, rclpy.create_node(probe_name), env, log_dir / "node.log")

    def node_log(self, tail: int = 2000) -> str:
        return self.log.read_text()[-tail:]

    def stop(self) -> None:
        import rclpy
        stop(self.streams)
        stop(self.node)
        self.probe.destroy_node()
        rclpy.try_shutdown()

    def __enter__(self) -> "FusionRun":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

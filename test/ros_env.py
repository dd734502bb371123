"""Helpers for tests over real DDS: a private ROS_DOMAIN_ID per run, processes, waiting."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mdgm_ros.ros.processes import private_ros_env, stop_process

__all__ = ["ROOT", "call", "private_ros_env", "spin_for", "spin_until", "start", "stop"]

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

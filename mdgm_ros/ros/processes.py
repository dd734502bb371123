"""Child processes of the tools that start ROS nodes (the demo, the tests): a private domain, a clean stop."""
from __future__ import annotations

import os
import subprocess


def private_ros_env(base: int = 1, span: int = 200) -> dict[str, str]:
    """This process's environment on a ROS_DOMAIN_ID of its own (derived from the pid), with discovery
    on this host only; also applied to ``os.environ`` so rclpy in this process joins the same domain."""
    os.environ["ROS_DOMAIN_ID"] = str(base + os.getpid() % span)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

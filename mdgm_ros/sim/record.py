"""Simulator events -> ROS messages on the default topics (docs/nodes.rst), and ``mdgm-ros simulate`` (record a bag).

Topics: ``/camera/image_raw`` (Image rgb8), ``/joint_states`` (JointState: position, velocity,
effort of the 9 Panda joints), ``/audio`` (Float32MultiArray, dims channels x samples, 16 kHz, 20 ms
chunks; unstamped on the wire, so its bag log time is the chunk's end), ``/tactile`` (Image 32FC1, the
two finger pads stacked), ``/sim/fault_labels`` and ``/sim/task_phase`` (std_msgs/String; labels are
JSON :class:`~mdgm_ros.sim.FaultLabel`, sent when a fault starts, with its planned end).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, String

from ..data.bags import BagWriter
from ..streams import bridge
from . import JOINT_NAMES, PandaTableSim, SimConfig, SimEvent, schedule_faults
from .faults import parse_kinds

TOPICS = {"camera": "/camera/image_raw", "joints": "/joint_states", "audio": "/audio", "tactile": "/tactile",
          "fault": "/sim/fault_labels", "phase": "/sim/task_phase"}
MESSAGE_TYPES = {"camera": Image, "joints": JointState, "audio": Float32MultiArray, "tactile": Image,
                 "fault": String, "phase": String}
FRAMES = {"camera": "scene_camera", "joints": "", "tactile": "panda_fingertips"}
JOINT_FIELDS = ["position", "velocity", "effort"]


def event_message(event: SimEvent, stamp_ns: int | None = None) -> Any:
    """A simulator event as the ROS message its topic carries (stamped with ``stamp_ns`` if given)."""
    stamp = event.stamp_ns if stamp_ns is None else stamp_ns
    if event.stream == "camera":
        pixels = np.transpose(event.data, (2, 0, 1)).astype(np.float32) / 255.0
        return bridge.array_to_image(pixels, stamp, FRAMES["camera"])
    if event.stream == "joints":
        return bridge.array_to_joint_state(event.data.reshape(-1), JOINT_NAMES, JOINT_FIELDS, stamp)
    if event.stream == "tactile":
        return bridge.array_to_tactile_image(event.data, stamp, FRAMES["tactile"])
    if event.stream == "audio":
        return bridge.array_to_multiarray(event.data[None, :], ["channels", "samples"])
    if event.stream == "fault":
        return String(data=event.data.to_json())
    return String(data=str(event.data))


def simulate_to_bag(out: str | Path, duration_s: float, seed: int, faults: str = "", per_kind: int = 0,
                    storage: str = "mcap", image_size: int = 64, distro: str = "kilted",
                    progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run the simulator for ``duration_s`` and record every stream (and the labels) into a bag."""
    kinds = parse_kinds(faults)
    plan = tuple(schedule_faults(kinds, duration_s, seed, per_kind=per_kind))
    config = SimConfig(seed=seed, image_width=image_size, image_height=image_size, faults=plan)
    started = time.perf_counter()
    counts: dict[str, int] = {}
    with PandaTableSim(config) as sim, BagWriter(out, storage=storage, distro=distro) as bag:
        bag.set_info("simulator", json.dumps({"seed": seed, "duration_s": duration_s, "faults": kinds,
                                              "image_size": image_size}))
        next_report = 0.0
        for event in sim.events(duration_s):
            bag.write(TOPICS[event.stream], event.stamp_ns, event_message(event))
            counts[event.stream] = counts.get(event.stream, 0) + 1
            elapsed = (event.stamp_ns - config.start_ns) / 1e9
            if progress is not None and elapsed >= next_report:
                progress(elapsed)
                next_report += 10.0
        labels = [json.loads(label.to_json()) for label in sim.labels]
    return {"bag": str(out), "duration_s": duration_s, "seed": seed, "storage": storage, "messages": counts,
            "faults": labels, "wall_s": round(time.perf_counter() - started, 1)}

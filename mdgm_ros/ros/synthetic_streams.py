"""``synthetic_streams``: publishes the four design-card streams from the synthetic shared-factor data.

Camera (Image rgb8) 30 Hz, joints (JointState, 9 Panda joints) 200 Hz, audio (Float32MultiArray,
20 ms PCM chunks) 50 Hz, tactile (Image 32FC1, two 4x4 pads) 100 Hz, all driven by the same slowly
moving latent factors, best-effort like sensor drivers. For smoke tests of an install and for the
node tests; the robot simulator publishes the real thing. ``--malformed`` adds one bad message per
stream every second (wrong encoding/size, NaN, unknown joints, empty audio), ``--stop-audio-after``
silences the microphone, ``--beyond-range-after`` drives the first joint to 20 times its spread from
its mean and saturates the first tactile pad (valid messages, far outside what a model trained on these
streams has seen; ``~/events`` says when).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, String

from ..core.engine import synthetic
from ..streams import bridge
from ..streams.params import PANDA_JOINTS
from .guard import GuardedNode, node_main, until_shutdown

RATES = {"camera": 30.0, "joints": 200.0, "audio": 50.0, "tactile": 100.0}


class SyntheticStreams(GuardedNode, Node):
    def __init__(self, args: argparse.Namespace):
        super().__init__("synthetic_streams")
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        self.started = time.monotonic()
        self.phase = 0.0
        self.count = {name: 0 for name in RATES}
        qos = qos_profile_sensor_data
        self.pubs = {"camera": self.create_publisher(Image, "/camera/image_raw", qos),
                     "joints": self.create_publisher(JointState, "/joint_states", qos),
                     "audio": self.create_publisher(Float32MultiArray, "/audio", qos),
                     "tactile": self.create_publisher(Image, "/tactile", qos)}
        self.events = self.create_publisher(String, "~/events", 10)
        for name, rate in RATES.items():
            self.create_timer(1.0 / rate, lambda n=name: self._tick(n))
        if args.malformed:
            self.create_timer(1.0, self._publish_malformed)
        self.hostile_count = 0
        self.beyond_range = False
        if args.hostile:
            self.create_timer(0.25, self._publish_hostile)

    def factors(self, t: float) -> np.ndarray:
        return np.array([[math.sin(0.7 * t), math.cos(0.45 * t)]])

    def _tick(self, name: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.args.duration and elapsed > self.args.duration:
            rclpy.try_shutdown()
            return
        if name == "audio" and self.args.stop_audio_after and elapsed > self.args.stop_audio_after:
            if self.count["audio"] >= 0:
                self.events.publish(String(data=f"audio_stopped {self.get_clock().now().nanoseconds}"))
                self.count["audio"] = -1
            return
        stamp = self.get_clock().now().nanoseconds
        c = self.factors(elapsed)
        msg = getattr(self, f"_{name}")(c, stamp)
        if self.args.beyond_range_after and elapsed > self.args.beyond_range_after and name in BEYOND_RANGE:
            if not self.beyond_range:
                self.events.publish(String(data=f"beyond_range {stamp}"))
                self.beyond_range = True
            msg = BEYOND_RANGE[name](self, c, stamp)
        self.pubs[name].publish(msg)
        if self.count[name] >= 0:
            self.count[name] += 1

    def _camera(self, c, stamp):
        pixels = synthetic.image(c, (3, self.args.camera_size, self.args.camera_size), self.rng)[0]
        return bridge.array_to_image(pixels, stamp, "camera")

    def _joints(self, c, stamp):
        values = synthetic.vector(c, 27, self.rng, seed=synthetic.vector_seed("joints"))[0]
        return bridge.array_to_joint_state(values, PANDA_JOINTS, ["position", "velocity", "effort"], stamp)

    def _audio(self, c, stamp):
        n = int(16000 / RATES["audio"])
        freq, amp = synthetic.tone(c, 16000)
        t = np.arange(n) / 16000.0
        chunk = amp[0] * np.sin(self.phase + 2 * np.pi * freq[0] * t) + self.rng.normal(0, 0.01, n)
        self.phase = (self.phase + 2 * np.pi * freq[0] * n / 16000.0) % (2 * np.pi)
        msg = Float32MultiArray()
        msg.data = np.clip(chunk, -1, 1).astype(np.float32)
        return msg

    def _tactile(self, c, stamp):
        return bridge.array_to_tactile_image(synthetic.tactile(c, (2, 4, 4), self.rng)[0], stamp, "fingertips")

    def _joints_beyond_range(self, c, stamp):
        """The first joint 20 standard deviations from its mean (it moves with mean 0.25 and standard
        deviation 0.7 between -1.1 and 1.1)."""
        values = synthetic.vector(c, 27, self.rng, seed=synthetic.vector_seed("joints"))[0]
        values[0] = 0.25 + 20.0 * 0.7
        return bridge.array_to_joint_state(values, PANDA_JOINTS, ["position", "velocity", "effort"], stamp)

    def _tactile_beyond_range(self, c, stamp):
        """The first pad saturated: every taxel at 4, where the synthetic contacts peak at 1.5."""
        values = synthetic.tactile(c, (2, 4, 4), self.rng)[0]
        values[0] = 4.0
        return bridge.array_to_tactile_image(values, stamp, "fingertips")

    def _publish_malformed(self) -> None:
        stamp = self.get_clock().now().nanoseconds
        bad_camera = bridge.array_to_image(np.zeros((3, 8, 8), np.float32), stamp)
        bad_camera.encoding = "yuv422"
        bad_joints = JointState(name=["elbow", "wrist"], position=[0.0, 1.0])
        bad_joints.header.stamp = bridge.ns_to_stamp(stamp)
        bad_audio = Float32MultiArray()
        bad_audio.data = [float("nan")] * 320
        bad_tactile = bridge.array_to_tactile_image(np.zeros((1, 3, 3), np.float32), stamp)
        for name, msg in (("camera", bad_camera), ("joints", bad_joints), ("audio", bad_audio),
                          ("tactile", bad_tactile)):
            self.pubs[name].publish(msg)


    def _publish_hostile(self) -> None:
        """One hostile message of four kinds, in turn: odd stamps, huge finite values, a 1 MB
        frame_id, a big-endian tactile frame, a large valid frame."""
        stamp = self.get_clock().now().nanoseconds
        kind = HOSTILE[self.hostile_count % len(HOSTILE)]
        self.hostile_count += 1
        c = self.factors(time.monotonic() - self.started)
        if kind in ("zero_stamp", "future_stamp", "invalid_nanosec", "huge_frame_id", "large_frame"):
            msg = self._camera(c, stamp)
            if kind == "zero_stamp":
                msg.header.stamp = bridge.ns_to_stamp(0)
            elif kind == "future_stamp":
                msg.header.stamp = bridge.ns_to_stamp(stamp + 3600 * 10**9)
            elif kind == "invalid_nanosec":
                msg.header.stamp.nanosec = 3_000_000_000
            elif kind == "huge_frame_id":
                msg.header.frame_id = "f" * 1_000_000
            else:
                msg = bridge.array_to_image(self.rng.random((3, 480, 640), dtype=np.float32), stamp, "camera")
            self.pubs["camera"].publish(msg)
        elif kind == "huge_joints":
            values = np.full(27, 3e38)
            self.pubs["joints"].publish(bridge.array_to_joint_state(values, PANDA_JOINTS,
                                                                    ["position", "velocity", "effort"], stamp))
        elif kind == "loud_audio":
            msg = Float32MultiArray()
            msg.data = np.full(320, 1e20, np.float32)
            self.pubs["audio"].publish(msg)
        else:                                            # a valid tactile frame, sent big-endian
            msg = self._tactile(c, stamp)
            values = np.frombuffer(msg.data, "<f4").astype(">f4")
            msg.is_bigendian, msg.data = 1, values.tobytes()
            self.pubs["tactile"].publish(msg)


BEYOND_RANGE = {"joints": SyntheticStreams._joints_beyond_range, "tactile": SyntheticStreams._tactile_beyond_range}
HOSTILE = ("zero_stamp", "future_stamp", "invalid_nanosec", "huge_frame_id", "large_frame", "huge_joints",
           "loud_audio", "bigendian_tactile")


def build_parser() -> argparse.ArgumentParser:
    """The node's own options (``--help`` prints them with the ROS arguments: mdgm_ros.ros.node_help)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0 = forever)")
    parser.add_argument("--camera-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--malformed", action="store_true", help="add one bad message per stream every second")
    parser.add_argument("--hostile", action="store_true",
                        help="add four hostile messages per second (odd stamps, huge values, ...)")
    parser.add_argument("--stop-audio-after", type=float, default=0.0, help="silence audio after this many seconds")
    parser.add_argument("--beyond-range-after", type=float, default=0.0,
                        help="after this many seconds, drive the first joint and tactile pad far beyond their "
                             "training range")
    return parser


@node_main
def main(argv: list[str] | None = None) -> int:
    args, ros_args = build_parser().parse_known_args(argv)
    rclpy.init(args=[sys.argv[0], *ros_args])
    node = SyntheticStreams(args)
    try:
        with until_shutdown(node.context):
            rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

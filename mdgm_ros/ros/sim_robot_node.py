"""``sim_robot_node``: the PyBullet Panda publishing the live topics of the default wire contract (docs/nodes.rst).

Publishes ``/camera/image_raw``, ``/joint_states``, ``/audio``, ``/tactile`` at their real rates (paced
to ``real_time_factor``), the task phase on ``/sim/task_phase`` and fault labels on
``/sim/fault_labels``. Messages are stamped with the node's clock when they are sent, so the
arrival-stamped audio and the header-stamped streams share one time base even if the simulator
falls behind real time. ``duration`` 0 runs until shutdown.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ..sim import PandaTableSim, SimConfig, schedule_faults
from ..sim.faults import parse_kinds
from ..sim.record import MESSAGE_TYPES, TOPICS, event_message
from .guard import GuardedNode, node_main, until_shutdown

SENSOR_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)   # reaches best-effort subscribers too
LABEL_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
HORIZON_S = 3600.0                                                           # fault plan of an endless run


class SimRobotNode(GuardedNode, Node):
    def __init__(self) -> None:
        super().__init__("sim_robot")
        p = lambda name, default, text: self.declare_parameter(  # noqa: E731
            name, default, ParameterDescriptor(description=text)).value
        self.seed = p("seed", 0, "random seed (scene, task script, faults)")
        self.duration = p("duration", 0.0, "seconds of robot time, 0 = until shutdown")
        faults = p("faults", "", "'all', or a comma list of fault kinds, '' = none")
        per_kind = p("faults_per_kind", 0, "faults of each kind (0: one per started minute)")
        size = p("image_size", 64, "camera width and height")
        self.rate = p("real_time_factor", 1.0, "robot seconds per wall second")
        if self.rate <= 0:
            raise ValueError("real_time_factor must be > 0")
        horizon = self.duration or HORIZON_S
        plan = tuple(schedule_faults(parse_kinds(faults), horizon, self.seed, per_kind=per_kind))
        self.sim = PandaTableSim(SimConfig(seed=self.seed, image_width=size, image_height=size, faults=plan))
        self.pubs = {}
        for stream, topic in TOPICS.items():
            qos = LABEL_QOS if stream in ("fault", "phase") else SENSOR_QOS
            self.pubs[stream] = self.create_publisher(MESSAGE_TYPES[stream], topic, qos)
        self.published = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.get_logger().info(f"simulating (seed {self.seed}, {len(plan)} faults planned, "
                               f"{'endless' if not self.duration else f'{self.duration} s'})")

    def _run(self) -> None:
        wall0 = time.monotonic()
        start_ns = self.sim.config.start_ns
        try:
            for event in self.sim.events(self.duration or 1e9):
                if self._stop.is_set():
                    break
                delay = wall0 + (event.stamp_ns - start_ns) / 1e9 / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = self.get_clock().now().nanoseconds
                if event.stream == "fault":             # the label's span, moved onto this node's clock
                    shift = now - event.stamp_ns
                    event.data = dataclasses.replace(event.data, start_ns=event.data.start_ns + shift,
                                                     end_ns=event.data.end_ns + shift)
                self.pubs[event.stream].publish(event_message(event, now))
                self.published += 1
        except Exception as err:  # report, do not hang the process
            self.get_logger().error(f"simulation stopped: {type(err).__name__}: {err}")
        finally:
            self.finished.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sim.close()


@node_main
def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = SimRobotNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        with until_shutdown(node.context):
            while rclpy.ok() and not node.finished.is_set():
                executor.spin_once(timeout_sec=0.1)
    finally:
        node.stop()
        node.get_logger().info(f"published {node.published} messages")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""PyBullet Franka Panda table-top simulator: the four robot streams, task phases and labelled faults.

No ROS imports: :class:`PandaTableSim` yields stamped numpy events; ``mdgm-ros simulate`` records them
into a rosbag2 and ``sim_robot_node`` publishes them live.
"""
from ..data.labels import FaultLabel
from .faults import FAULT_KINDS, FaultSpec, schedule_faults
from .robot import JOINT_NAMES, PandaTableSim, SimConfig, SimEvent

__all__ = ["FAULT_KINDS", "FaultLabel", "FaultSpec", "JOINT_NAMES", "PandaTableSim", "SimConfig", "SimEvent",
           "schedule_faults"]

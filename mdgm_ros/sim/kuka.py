"""A second simulated robot: a KUKA LBR iiwa 7 on a table moving one block (pick-and-place through a
suction cup at its flange, pushes, reaches).

Its streams follow other conventions than the Panda's (see :data:`STREAMS`): a JPEG wrist camera at
15 Hz, joint states at 100 Hz in the driver's order (not the URDF's), a wrist force-torque sensor and an
IMU on the end effector at 100 Hz and, optionally, a 16UC1 depth image of a fixed scene camera at 10 Hz.
Physics runs at 200 Hz in PyBullet's DIRECT mode; stamps are sim time (``start_ns`` + t); everything
random comes from the seed. :class:`KukaTableSim` yields numpy events (no ROS import);
:func:`simulate_kuka_to_bag` records them into a rosbag2, its fault labels both on ``/sim/fault_labels``
and in the sidecar file ``BAG.labels.yaml`` next to the bag.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from ..data.labels import FaultLabel, find_sidecar, sidecar_path, write_sidecar
from .faults import FaultSpec, parse_kinds, schedule_faults
from .quiet import quiet_c_output
from .robot import SimEvent
from .sensors import LinkImu, blackout, depth_millimetres, occlude, quaternion_matrix

with quiet_c_output():           # pybullet prints its build-time banner from C on import
    import pybullet as pb
from .world import NS, TableSim, table_world


class Stream(NamedTuple):
    topic: str
    msgtype: str
    rate_hz: float | None         # None: sent when something happens
    frame_id: str


# the robot's topics: stream -> topic, message type, rate, header frame
STREAMS: dict[str, Stream] = {
    "camera": Stream("/iiwa/wrist_camera/image/compressed", "sensor_msgs/msg/CompressedImage", 15.0,
                     "iiwa_wrist_camera_optical_frame"),
    "joints": Stream("/iiwa/joint_states", "sensor_msgs/msg/JointState", 100.0, ""),
    "wrench": Stream("/iiwa/wrist_ft", "geometry_msgs/msg/WrenchStamped", 100.0, "iiwa_link_ee"),
    "imu": Stream("/iiwa/imu", "sensor_msgs/msg/Imu", 100.0, "iiwa_link_7"),
    "depth": Stream("/iiwa/depth/image_raw", "sensor_msgs/msg/Image", 10.0, "scene_depth_optical_frame"),
    "fault": Stream("/sim/fault_labels", "std_msgs/msg/String", None, ""),
    "phase": Stream("/sim/task_phase", "std_msgs/msg/String", None, ""),
}
DRIVER_ORDER = (2, 3, 4, 5, 6, 0, 1)                  # URDF joint index of each JointState entry
JOINT_NAMES = [f"iiwa_joint_{i + 1}" for i in DRIVER_ORDER]
KUKA_FAULT_KINDS = {
    "collision": "a fixed box appears just ahead of the tool moving across the table: the arm hits it and stalls "
                 "(F/T and IMU spike, joints at their torque limits)",
    "object_drop": "the suction cup loses its vacuum while carrying: the block falls (the F/T loses its weight)",
    "joint_fault": "a shoulder or elbow motor loses most of its torque (the arm sags); then the vacuum goes off and "
                   "the arm homes to its rest posture in joint space (1 s, inside the label)",
    "camera_occlusion": "a dark patch covers a large part of the wrist camera image",
    "camera_blackout": "the wrist camera returns black frames",
    "payload": "1.5-3 kg more hang on the flange (a tool change gone wrong): F/T and joint efforts shift",
    "stream_dropout": "one sensor stream stops publishing",
}
DROPOUT_STREAMS = ("camera", "joints", "wrench", "imu")
# denser than the Panda's schedule: faults fit into a bag of a few seconds
SCHEDULE = {"warmup_s": 1.0, "min_gap_s": 1.0, "length_s": (0.8, 1.5)}
IMU_NOISE = {"accel": 0.02, "gyro": 0.002}            # white noise std, m/s^2 and rad/s
WRENCH_NOISE = {"force": 0.05, "torque": 0.004}      # N and N m

_EE = 6                                               # link 7: the flange link
_ARM = list(range(7))
_FORCES = [176.0, 176.0, 110.0, 110.0, 110.0, 40.0, 40.0]   # the iiwa 7's joint torque limits, N m
_REST = [0.0, 0.5, 0.0, -1.4, 0.0, 1.24, 0.0]
_LOWER = [-2.967, -2.094, -2.967, -2.094, -2.967, -2.094, -3.054]
_UPPER = [-lo for lo in _LOWER]
_RANGES = [u - lo for u, lo in zip(_UPPER, _LOWER)]
_FLANGE = 0.05                     # link 7 origin -> flange face, along its z axis, m
_HALF = 0.025                      # the block's half size, m
_BLOCK_KG = 0.5
_SUCTION_N = 150.0
_CRUISE_Z = 0.22
_TOOL_RADIUS = 0.055               # the flange's radius, m
_OBSTACLE_HALF = 0.035
_RECOVER_S = 1.0
_IDLE_S = 0.5                      # the arm waits still this long before its first episode
_SETTLE_S = 0.5                    # at least this long between one fault's end and the next one's start
_CAMERA_MOUNT = np.array([0.07, 0.0, 0.03])           # wrist camera in the link 7 frame, looking along +z
_DEPTH_EYE, _DEPTH_AT = [1.25, 0.0, 0.75], [0.5, 0.0, 0.05]
_DEPTH_NEAR, _DEPTH_FAR = 0.2, 3.0


@dataclass(frozen=True)
class KukaConfig:
    seed: int = 0
    image_size: int = 64              # wrist camera and depth image side, px
    physics_hz: int = 200
    sensor_every: int = 2             # physics steps per joint-state / F/T / IMU sample (100 Hz)
    camera_hz: float = 15.0
    depth: bool = True
    depth_hz: float = 10.0
    start_ns: int = 1_700_000_000 * NS
    faults: tuple[FaultSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError("camera image must be at least 8x8")


@dataclass
class _Segment:
    phase: str
    target: np.ndarray                # tool (flange centre) position
    seconds: float
    yaw: float = 0.0


@dataclass
class _Fault:
    spec: FaultSpec
    end_step: int
    label: FaultLabel | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _smoothstep(s: float) -> float:
    return s * s * (3 - 2 * s)


class KukaTableSim(TableSim):
    """``events(seconds)`` yields :class:`~mdgm_ros.sim.SimEvent`: camera (H, W, 3 uint8 RGB), joints
    (3, 7: position, velocity, effort in :data:`JOINT_NAMES` order), wrench (6: force N, torque N m, in
    ``iiwa_link_ee``), imu (10: orientation xyzw, angular velocity, linear acceleration), depth (H, W
    uint16 mm), phase (str) or fault (FaultLabel)."""

    def __init__(self, config: KukaConfig = KukaConfig()):
        self.config = config
        self.rng = np.random.default_rng([config.seed, 7727])              # the task and the faults
        self.noise = np.random.default_rng([config.seed, 6271])            # joint, F/T, IMU and camera noise
        self.depth_noise = np.random.default_rng([config.seed, 3203])      # its own: depth on or off
        self.dt = 1.0 / config.physics_hz
        self.imu = LinkImu(self.noise, IMU_NOISE["accel"], IMU_NOISE["gyro"])
        self.client = pb.connect(pb.DIRECT)
        self._build_world()
        self._plan: list[_Segment] = []
        self._segment_step = 0
        self._segment_start = self._tool_position()
        self._segment_start_q = np.asarray(_REST)
        self._segment_start_yaw = self._yaw = 0.0
        self._phase = ""
        self._episodes = 0
        self._grip: int | None = None                     # suction constraint id while holding the block
        self._pending = sorted(config.faults, key=lambda f: f.start_s)
        self._active: list[_Fault] = []
        self._quiet_until = 0                             # no fault starts before this step
        self.labels: list[FaultLabel] = []
        self.step_index = 0

    # ------------------------------------------------------------------ world
    def _build_world(self) -> None:
        c = self.client
        # no substeps: with them PyBullet's joint reaction forces (the F/T reading) are off in motion
        self.table, self.robot = table_world(c, self.dt, 0, "kuka_iiwa/model.urdf")
        for j, q in enumerate(_REST):
            pb.resetJointState(self.robot, j, q, physicsClientId=c)
        for _ in range(3):               # start where the controller's IK puts the tool: no jump at t = 0
            for j, q in enumerate(self._ik(self._tool_position(), 0.0)):
                pb.resetJointState(self.robot, j, q, physicsClientId=c)
        pb.enableJointForceTorqueSensor(self.robot, _EE, True, physicsClientId=c)
        self.flange_kg = pb.getDynamicsInfo(self.robot, _EE, physicsClientId=c)[0]
        self.block = pb.loadURDF("cube_small.urdf", [0.55, 0.0, _HALF + 0.001], physicsClientId=c)
        pb.changeVisualShape(self.block, -1, rgbaColor=[*self.rng.uniform(0.2, 1.0, 3), 1.0], physicsClientId=c)
        pb.changeDynamics(self.block, -1, mass=_BLOCK_KG, lateralFriction=0.8, physicsClientId=c)
        self._place_randomly()
        self.wrist_projection = pb.computeProjectionMatrixFOV(70.0, 1.0, 0.01, 2.0)
        self.depth_view = pb.computeViewMatrix(_DEPTH_EYE, _DEPTH_AT, [0, 0, 1])
        self.depth_projection = pb.computeProjectionMatrixFOV(58.0, 1.0, _DEPTH_NEAR, _DEPTH_FAR)

    def _place_randomly(self) -> None:
        x, y = self.rng.uniform(0.45, 0.65), self.rng.uniform(-0.2, 0.2)
        orn = pb.getQuaternionFromEuler([0, 0, float(self.rng.uniform(-0.6, 0.6))])
        pb.resetBasePositionAndOrientation(self.block, [x, y, _HALF + 0.001], orn, physicsClientId=self.client)
        pb.resetBaseVelocity(self.block, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    # ------------------------------------------------------------------ task script
    def _flange_pose(self) -> tuple[np.ndarray, np.ndarray]:
        state = pb.getLinkState(self.robot, _EE, physicsClientId=self.client)
        return np.array(state[4]), np.array(state[5])

    def _tool_position(self) -> np.ndarray:
        pos, orn = self._flange_pose()
        return pos + quaternion_matrix(orn) @ np.array([0.0, 0.0, _FLANGE])

    def _block_position(self) -> np.ndarray:
        return np.array(pb.getBasePositionAndOrientation(self.block, physicsClientId=self.client)[0])

    def _plan_episode(self) -> list[_Segment]:
        if self._grip is not None:
            self._release()
        pos = self._block_position()
        if not (0.35 < pos[0] < 0.75 and abs(pos[1]) < 0.3 and -0.01 < pos[2] < 0.06):
            self._place_randomly()
            pos = self._block_position()
        kind = "pick" if self._episodes == 0 else str(self.rng.choice(["reach", "push", "pick", "pick"]))
        self._episodes += 1
        yaw = float(self.rng.uniform(-0.5, 0.5))
        top = pos[2] + _HALF + 0.002
        if kind == "reach":
            goal = np.array([self.rng.uniform(0.4, 0.7), self.rng.uniform(-0.25, 0.25), self.rng.uniform(0.15, 0.35)])
            return [_Segment("reach", goal, float(self.rng.uniform(1.0, 1.6)), yaw), _Segment("hold", goal, 0.4, yaw)]
        if kind == "push":
            direction = self.rng.normal(size=2)
            direction /= np.linalg.norm(direction) + 1e-9
            behind, end = pos[:2] - 0.09 * direction, pos[:2] + 0.1 * direction
            return [_Segment("approach", np.array([*behind, 0.15]), 1.0, yaw),
                    _Segment("descend", np.array([*behind, 0.035]), 0.6, yaw),
                    _Segment("push", np.array([*end, 0.035]), 1.2, yaw),
                    _Segment("retreat", np.array([*end, _CRUISE_Z]), 0.6, yaw)]
        place = np.array([self.rng.uniform(0.45, 0.65), self.rng.uniform(-0.2, 0.2)])
        idle = [_Segment("idle", self._tool_position(), _IDLE_S)] if self._episodes == 1 else []
        return idle + [_Segment("approach", np.array([*pos[:2], 0.15]), 1.0, yaw),
                       _Segment("descend", np.array([*pos[:2], top]), 0.7, yaw),
                       _Segment("grasp", np.array([*pos[:2], top]), 0.4, yaw),
                       _Segment("lift", np.array([*pos[:2], _CRUISE_Z]), 0.6, yaw),
                       _Segment("transport", np.array([*place, _CRUISE_Z]), 1.2, yaw),
                       _Segment("place", np.array([*place, 2 * _HALF + 0.01]), 0.6, yaw),
                       _Segment("release", np.array([*place, 2 * _HALF + 0.01]), 0.3, yaw),
                       _Segment("retreat", np.array([*place, _CRUISE_Z]), 0.5, yaw)]

    def _steps(self, segment: _Segment) -> int:
        return max(1, int(segment.seconds * self.config.physics_hz))

    def _current_segment(self) -> _Segment:
        if not self._plan or self._segment_step >= self._steps(self._plan[0]):
            done = self._plan.pop(0) if self._plan else None
            if not self._plan:
                self._plan = self._plan_episode()
            self._begin_segment()
            if done is not None and done.phase != "recover":
                self._segment_start = done.target        # on from the commanded path: the arm lags behind it
        return self._plan[0]

    def _begin_segment(self) -> None:
        """Start the current segment (again) from where the tool is and the yaw last commanded."""
        self._segment_start_yaw = self._yaw
        self._segment_step = 0
        self._segment_start = self._tool_position()
        self._segment_start_q = self._joint_states()[0]

    def _control(self, segment: _Segment) -> None:
        s = _smoothstep(min(1.0, (self._segment_step + 1) / self._steps(segment)))
        if segment.phase == "recover":               # joint-space homing after a joint fault
            q = list(self._segment_start_q + s * (np.asarray(_REST) - self._segment_start_q))
        else:
            self._yaw = self._segment_start_yaw + s * (segment.yaw - self._segment_start_yaw)
            q = self._ik(self._segment_start + s * (segment.target - self._segment_start), self._yaw)
        forces = list(_FORCES)
        fault = self._active_kind("joint_fault")
        if fault is not None and self.step_index < fault.extra["recover_at"]:
            forces[fault.extra["joint"]] *= 0.04
        pb.setJointMotorControlArray(self.robot, _ARM, pb.POSITION_CONTROL, targetPositions=q, forces=forces,
                                     physicsClientId=self.client)
        if segment.phase == "grasp" and self._grip is None and self._segment_step == self._steps(segment) - 1:
            self._suction_on()                       # at the end of the dwell: the arm does not press the block
        elif segment.phase == "release" and self._grip is not None:
            self._release()

    def _ik(self, tool: np.ndarray, yaw: float) -> list[float]:
        orn = pb.getQuaternionFromEuler([math.pi, 0.0, yaw])
        flange = tool - quaternion_matrix(orn) @ np.array([0.0, 0.0, _FLANGE])
        q = pb.calculateInverseKinematics(self.robot, _EE, flange.tolist(), orn, lowerLimits=_LOWER,
                                          upperLimits=_UPPER, jointRanges=_RANGES, restPoses=_REST,
                                          maxNumIterations=30, physicsClientId=self.client)
        return list(q[:7])

    def _suction_on(self) -> None:
        """The cup grips the block (holding it as it is now) when the flange is within 1.5 cm of it."""
        if not pb.getClosestPoints(self.robot, self.block, 0.015, linkIndexA=_EE, physicsClientId=self.client):
            return
        state = pb.getLinkState(self.robot, _EE, physicsClientId=self.client)      # frames: centres of mass
        inv_pos, inv_orn = pb.invertTransform(state[0], state[1])
        block_pos, block_orn = pb.getBasePositionAndOrientation(self.block, physicsClientId=self.client)
        rel_pos, rel_orn = pb.multiplyTransforms(inv_pos, inv_orn, block_pos, block_orn)
        self._grip = pb.createConstraint(self.robot, _EE, self.block, -1, pb.JOINT_FIXED, [0, 0, 0], rel_pos,
                                         [0, 0, 0], rel_orn, physicsClientId=self.client)
        pb.changeConstraint(self._grip, maxForce=_SUCTION_N, physicsClientId=self.client)

    def _release(self) -> None:
        pb.removeConstraint(self._grip, physicsClientId=self.client)
        self._grip = None

    def _recover(self) -> None:
        """Torque is back: vacuum off, drop the episode and home to the rest posture in joint space."""
        if self._grip is not None:
            self._release()
        self._plan = [_Segment("recover", self._tool_position(), _RECOVER_S)]
        self._begin_segment()
        self._yaw = 0.0                               # the rest posture's

    def _planned_tool(self, ahead: int) -> np.ndarray:
        """Where the script puts the tool ``ahead`` physics steps from now (within the planned episode)."""
        step, start = self._segment_step + ahead, self._segment_start
        for i, segment in enumerate(self._plan):
            n = self._steps(segment)
            if step < n or i == len(self._plan) - 1:
                return start + _smoothstep(min(1.0, (step + 1) / n)) * (segment.target - start)
            step -= n
            start = segment.target
        return start

    # ------------------------------------------------------------------ faults
    def _update_faults(self) -> list[FaultLabel]:
        t = self.step_index * self.dt
        started = []
        self._end_due_faults()
        for spec in [f for f in self._pending if f.start_s <= t]:
            if self._active or self.step_index < self._quiet_until:   # one at a time, apart: clear labels
                break
            where = self._obstacle_site() if spec.kind == "collision" else None
            waiting = (spec.kind == "object_drop" and not self._carrying()) or \
                (spec.kind == "collision" and where is None)
            if waiting:                               # not yet possible: wait, for 15 s at most
                if t > spec.start_s + 15.0:
                    self._pending.remove(spec)
                continue
            self._pending.remove(spec)
            started.append(self._start_fault(spec, where).label)
        return started

    def _carrying(self) -> bool:
        return self._grip is not None and self._phase == "transport"

    def _obstacle_site(self) -> np.ndarray | None:
        """Just in front of the tool (1 cm from it) where the script moves it 4 cm or more across the table
        within 0.6 s, at its height; None while it moves no such distance that soon."""
        tool = self._tool_position()
        hz = self.config.physics_hz
        for ahead in range(hz // 20, int(0.6 * hz) + 1, 5):
            point = self._planned_tool(ahead)
            across = point[:2] - tool[:2]
            if np.linalg.norm(across) >= 0.04:
                xy = tool[:2] + across / np.linalg.norm(across) * (_TOOL_RADIUS + _OBSTACLE_HALF + 0.01)
                return np.array([xy[0], xy[1], max(point[2] - 0.02, 0.1)])
        return None

    def _start_fault(self, spec: FaultSpec, where: np.ndarray | None) -> _Fault:
        steps = int(round(spec.duration_s * self.config.physics_hz))
        homing = int(round(_RECOVER_S * self.config.physics_hz)) if spec.kind == "joint_fault" else 0
        fault = _Fault(spec, self.step_index + steps + homing)
        detail = dict(spec.detail)
        if spec.kind == "collision":
            half = [_OBSTACLE_HALF] * 3
            shape = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=self.client)
            visual = pb.createVisualShape(pb.GEOM_BOX, halfExtents=half, rgbaColor=[0.9, 0.1, 0.1, 1],
                                          physicsClientId=self.client)
            fault.extra["body"] = pb.createMultiBody(0.0, shape, visual, where.tolist(), physicsClientId=self.client)
        elif spec.kind == "object_drop":
            self._release()
        elif spec.kind == "joint_fault":
            fault.extra["joint"] = int(self.rng.choice([1, 3]))           # shoulder or elbow
            fault.extra["recover_at"] = self.step_index + steps
            detail["joint"] = f"iiwa_joint_{fault.extra['joint'] + 1}"
        elif spec.kind == "camera_occlusion":
            fault.extra["seed"] = int(self.rng.integers(1 << 30))
        elif spec.kind == "payload":
            kg = round(float(self.rng.uniform(1.5, 3.0)), 2)
            pb.changeDynamics(self.robot, _EE, mass=self.flange_kg + kg, physicsClientId=self.client)
            detail["kg"] = kg
        fault.label = FaultLabel(spec.kind, self._stamp(self.step_index), self._stamp(fault.end_step), detail)
        self._active.append(fault)
        self.labels.append(fault.label)
        return fault

    def _end_fault(self, fault: _Fault) -> None:
        self._active.remove(fault)
        self._quiet_until = self.step_index + int(round(_SETTLE_S * self.config.physics_hz))
        if fault.spec.kind == "collision":               # the way is free: go on from where the arm stalled
            pb.removeBody(fault.extra["body"], physicsClientId=self.client)
            if self._plan and self._plan[0].phase != "recover":
                self._begin_segment()
        elif fault.spec.kind == "payload":
            pb.changeDynamics(self.robot, _EE, mass=self.flange_kg, physicsClientId=self.client)

    # ------------------------------------------------------------------ sensors
    def _joint_states(self) -> np.ndarray:
        """(3, 7) position, velocity, effort in URDF order."""
        states = pb.getJointStates(self.robot, _ARM, physicsClientId=self.client)
        return np.array([[s[0] for s in states], [s[1] for s in states], [s[3] for s in states]], np.float64)

    def _joints(self) -> np.ndarray:
        joints = self._joint_states()[:, list(DRIVER_ORDER)]
        joints[2] += self.noise.normal(0.0, 0.05, 7)                       # joint torque sensor noise
        return joints

    def _wrench(self) -> np.ndarray:
        """What the flange link and its load exert on the last joint, in the flange frame (the sensor reads
        the tool's weight along +z when pointing down)."""
        reaction = np.asarray(pb.getJointState(self.robot, _EE, physicsClientId=self.client)[2], np.float64)
        noise = np.concatenate([self.noise.normal(0.0, WRENCH_NOISE["force"], 3),
                                self.noise.normal(0.0, WRENCH_NOISE["torque"], 3)])
        return -reaction + noise

    def _imu(self) -> np.ndarray:
        state = pb.getLinkState(self.robot, _EE, computeLinkVelocity=1, physicsClientId=self.client)
        dt = self.config.sensor_every * self.dt
        orientation, gyro, accel = self.imu.sample(state[6], state[7], state[5], dt)
        return np.concatenate([orientation, gyro, accel])

    def _camera(self) -> np.ndarray:
        size = self.config.image_size
        pos, orn = self._flange_pose()
        rot = quaternion_matrix(orn)
        eye = pos + rot @ _CAMERA_MOUNT
        view = pb.computeViewMatrix(eye.tolist(), (eye + rot[:, 2]).tolist(), rot[:, 0].tolist())
        _, _, rgba, _, _ = pb.getCameraImage(size, size, view, self.wrist_projection, renderer=pb.ER_TINY_RENDERER,
                                             flags=pb.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client)
        image = np.asarray(rgba, np.uint8).reshape(size, size, 4)[:, :, :3]
        image = np.clip(image.astype(np.int16) + self.noise.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
        occlusion = self._active_kind("camera_occlusion")
        if occlusion is not None:
            image = occlude(image, occlusion.extra["seed"])
        if self._active_kind("camera_blackout") is not None:
            image = blackout(image, self.noise)
        return image

    def _depth(self) -> np.ndarray:
        size = self.config.image_size
        _, _, _, zbuffer, _ = pb.getCameraImage(size, size, self.depth_view, self.depth_projection,
                                                renderer=pb.ER_TINY_RENDERER, flags=pb.ER_NO_SEGMENTATION_MASK,
                                                physicsClientId=self.client)
        zbuffer = np.asarray(zbuffer, np.float64).reshape(size, size)
        return depth_millimetres(zbuffer, _DEPTH_NEAR, _DEPTH_FAR, self.depth_noise)

    # ------------------------------------------------------------------ main loop
    def events(self, duration_s: float) -> Iterator[SimEvent]:
        """Step the simulation for ``duration_s`` seconds and yield its events in stamp order."""
        cfg = self.config
        cameras = {"camera": (cfg.camera_hz, self._camera)}
        if cfg.depth:
            cameras["depth"] = (cfg.depth_hz, self._depth)
        frames = dict.fromkeys(cameras, 0)              # frames so far: the k-th is due at step 1 + k * hz / rate
        for _ in range(int(round(duration_s * cfg.physics_hz))):
            stamp = self._stamp(self.step_index)
            for label in self._update_faults():
                yield SimEvent("fault", label.start_ns, label)
            segment = self._current_segment()
            if segment.phase != self._phase:
                self._phase = segment.phase
                yield SimEvent("phase", stamp, segment.phase)
            self._control(segment)
            pb.stepSimulation(physicsClientId=self.client)
            self._segment_step += 1
            self.step_index += 1
            stamp = self._stamp(self.step_index)
            if self.step_index % cfg.sensor_every == 0:
                readings = {"joints": self._joints(), "wrench": self._wrench(), "imu": self._imu()}
                for stream, data in readings.items():
                    if not self._dropped(stream):
                        yield SimEvent(stream, stamp, data)
            for stream, (rate, render) in cameras.items():
                if (self.step_index - 1) * rate >= frames[stream] * cfg.physics_hz:
                    frames[stream] += 1
                    if not self._dropped(stream):
                        yield SimEvent(stream, stamp, render())
        for fault in list(self._active):                  # a fault cut short by the end of the run
            self._end_fault(fault)


# ---------------------------------------------------------------------- ROS messages and bags
@functools.lru_cache(maxsize=1)
def _ros() -> dict[str, Any]:
    """The ROS message classes, imported on first use (the simulator itself needs no ROS)."""
    from geometry_msgs.msg import Quaternion, Vector3, Wrench, WrenchStamped
    from sensor_msgs.msg import CompressedImage, Image, Imu, JointState
    from std_msgs.msg import Header, String

    from ..streams.bridge import ns_to_stamp
    return {"Quaternion": Quaternion, "Vector3": Vector3, "Wrench": Wrench, "WrenchStamped": WrenchStamped,
            "CompressedImage": CompressedImage, "Image": Image, "Imu": Imu, "JointState": JointState,
            "Header": Header, "String": String, "ns_to_stamp": ns_to_stamp}


def _diagonal(variance: float) -> list[float]:
    return [variance, 0.0, 0.0, 0.0, variance, 0.0, 0.0, 0.0, variance]


def kuka_event_message(event: SimEvent, stamp_ns: int | None = None) -> Any:
    """A :class:`KukaTableSim` event as the ROS message of its topic (stamped with ``stamp_ns`` if given)."""
    import cv2

    ros = _ros()
    stamp = event.stamp_ns if stamp_ns is None else stamp_ns
    header = ros["Header"](stamp=ros["ns_to_stamp"](stamp), frame_id=STREAMS[event.stream].frame_id)
    data = event.data
    if event.stream == "camera":
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(data[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return ros["CompressedImage"](header=header, format="rgb8; jpeg compressed bgr8", data=jpeg.tobytes())
    if event.stream == "joints":
        return ros["JointState"](header=header, name=list(JOINT_NAMES), position=data[0].tolist(),
                                 velocity=data[1].tolist(), effort=data[2].tolist())
    if event.stream == "wrench":
        v3 = ros["Vector3"]
        return ros["WrenchStamped"](header=header, wrench=ros["Wrench"](force=v3(x=data[0], y=data[1], z=data[2]),
                                                                      torque=v3(x=data[3], y=data[4], z=data[5])))
    if event.stream == "imu":
        v3 = ros["Vector3"]
        x, y, z, w = data[:4]
        return ros["Imu"](header=header, orientation=ros["Quaternion"](x=x, y=y, z=z, w=w),
                          orientation_covariance=_diagonal(1e-4),
                          angular_velocity=v3(x=data[4], y=data[5], z=data[6]),
                          angular_velocity_covariance=_diagonal(IMU_NOISE["gyro"] ** 2),
                          linear_acceleration=v3(x=data[7], y=data[8], z=data[9]),
                          linear_acceleration_covariance=_diagonal(IMU_NOISE["accel"] ** 2))
    if event.stream == "depth":
        height, width = data.shape
        msg = ros["Image"](header=header, height=height, width=width, encoding="16UC1", is_bigendian=0,
                           step=width * 2)
        msg.data = np.ascontiguousarray(data, "<u2").tobytes()
        return msg
    if event.stream == "fault":
        return ros["String"](data=data.to_json())
    return ros["String"](data=str(data))


def simulate_kuka_to_bag(out: str | Path, duration_s: float, seed: int, faults: str = "", per_kind: int = 0,
                         storage: str = "mcap", image_size: int = 64, distro: str = "kilted",
                         progress: Callable[[float], None] | None = None, depth: bool = True) -> dict[str, Any]:
    """Run the KUKA simulator for ``duration_s`` and record every stream into a bag, and its fault labels
    into the sidecar file ``OUT.labels.yaml`` as well (written, with an empty list when no fault happened,
    once the bag is complete)."""
    from ..data.bags import BagError, BagWriter

    kinds = parse_kinds(faults, KUKA_FAULT_KINDS)
    existing = find_sidecar(out)
    if existing is not None:
        raise BagError(f"{existing} exists (the labels of an earlier bag); remove it or choose another --out")
    plan = tuple(schedule_faults(kinds, duration_s, seed, per_kind=per_kind, streams=DROPOUT_STREAMS, **SCHEDULE))
    config = KukaConfig(seed=seed, image_size=image_size, depth=depth, faults=plan)
    started = time.perf_counter()
    counts: dict[str, int] = {}
    first_ns = None
    with KukaTableSim(config) as sim, BagWriter(out, storage=storage, distro=distro) as bag:
        bag.set_info("simulator", json.dumps({"robot": "kuka_iiwa", "seed": seed, "duration_s": duration_s,
                                              "faults": kinds, "image_size": image_size, "depth": depth}))
        next_report = 0.0
        for event in sim.events(duration_s):
            bag.write(STREAMS[event.stream].topic, event.stamp_ns, kuka_event_message(event))
            counts[event.stream] = counts.get(event.stream, 0) + 1
            first_ns = event.stamp_ns if first_ns is None else min(first_ns, event.stamp_ns)
            elapsed = (event.stamp_ns - config.start_ns) / 1e9
            if progress is not None and elapsed >= next_report:
                progress(elapsed)
                next_report += 10.0
        labels = list(sim.labels)
    sidecar = write_sidecar(sidecar_path(out), labels, config.start_ns if first_ns is None else first_ns,
                            Path(out).name)
    return {"bag": str(out), "robot": "kuka", "duration_s": duration_s, "seed": seed, "storage": storage,
            "messages": counts,
            "faults": [json.loads(label.to_json()) for label in labels], "labels_file": str(sidecar),
            "wall_s": round(time.perf_counter() - started, 1)}

"""The simulated robot: a Franka Panda on a table doing scripted reach / push / pick episodes.

Physics runs at 200 Hz (the joint-state rate). Every step yields the joint states; every 2nd the
fingertip taxels (100 Hz); every 4th a 20 ms audio chunk; the camera renders at 30 Hz. Events carry
the sim-time stamp in nanoseconds (``start_ns`` + t). Everything random comes from the seed, so a run
is reproducible; PyBullet runs in DIRECT mode (no display) with its TinyRenderer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..data.labels import FaultLabel
from .faults import FaultSpec
from .quiet import quiet_c_output

with quiet_c_output():           # pybullet prints its build-time banner from C on import
    import pybullet as pb
from .sensors import AudioSynth, blackout, occlude, taxel_grid
from .world import NS, TableSim, table_world

JOINT_NAMES = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
_ARM = list(range(7))
_FINGERS = [9, 10]
_JOINTS = _ARM + _FINGERS
_GRASP_LINK = 11
_ARM_FORCES = [87.0] * 4 + [12.0] * 3
_REST = [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785]
_LOWER = [-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671, 0.0, 0.0]
_UPPER = [2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671, 0.04, 0.04]
_RANGES = [u - lo for u, lo in zip(_UPPER, _LOWER)]
_DOWN = math.pi
_GRIP_FORCE = 40.0                 # N per finger
_RECOVER_S = 1.0                  # the joint-space move home that ends a joint fault (inside its label)
_DROP_GRIP_SHARE = 0.0            # what object_drop leaves of it: the fingers go slack


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    image_width: int = 64
    image_height: int = 64
    physics_hz: int = 200
    camera_hz: float = 30.0
    tactile_every: int = 2            # physics steps per tactile frame (100 Hz)
    audio_every: int = 4              # physics steps per audio chunk (20 ms)
    sample_rate: int = 16000
    objects: int = 3
    start_ns: int = 1_700_000_000 * NS
    faults: tuple[FaultSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.image_width < 8 or self.image_height < 8:
            raise ValueError("camera image must be at least 8x8")
        if self.sample_rate % self.physics_hz:
            raise ValueError("sample_rate must be a multiple of physics_hz")


@dataclass
class SimEvent:
    """``stream`` is camera (H, W, 3 uint8), joints (3, 9: position, velocity, effort), tactile
    (2, 4, 4 float32), audio (samples, float32; stamped at its end), phase (str) or fault (FaultLabel)."""

    stream: str
    stamp_ns: int
    data: Any


@dataclass
class _Segment:
    phase: str
    target: np.ndarray
    gripper: float                    # finger opening per finger, m
    seconds: float
    yaw: float = 0.0


@dataclass
class _ActiveFault:
    spec: FaultSpec
    start_step: int
    end_step: int
    body: int | None = None
    label: FaultLabel | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PandaTableSim(TableSim):
    def __init__(self, config: SimConfig = SimConfig()):
        self.config = config
        self.rng = np.random.default_rng([config.seed, 104729])
        self.dt = 1.0 / config.physics_hz
        self.client = pb.connect(pb.DIRECT)
        self._build_world()
        self.audio = AudioSynth(np.random.default_rng([config.seed, 15485863]), config.sample_rate)
        self._audio_buffer: list[np.ndarray] = []
        self._contact_force: dict[tuple[int, int], float] = {}
        self._plan: list[_Segment] = []
        self._segment_step = 0
        self._segment_start = np.zeros(3)
        self._segment_start_q = np.asarray(_REST)
        self._phase = ""
        self._held: int | None = None
        self._pending_faults = sorted(config.faults, key=lambda f: f.start_s)
        self._active: list[_ActiveFault] = []
        self.labels: list[FaultLabel] = []
        self.step_index = 0

    # ------------------------------------------------------------------ world
    def _build_world(self) -> None:
        c = self.client
        self.table, self.robot = table_world(c, self.dt, 2, "franka_panda/panda.urdf")
        for j, q in enumerate(_REST):
            pb.resetJointState(self.robot, j, q, physicsClientId=c)
        for j in _FINGERS:
            pb.resetJointState(self.robot, j, 0.04, physicsClientId=c)
            pb.changeDynamics(self.robot, j, lateralFriction=1.5, physicsClientId=c)
        self.objects = []
        for i in range(self.config.objects):
            body = pb.loadURDF("cube_small.urdf", [0.5, -0.15 + 0.15 * i, 0.03], physicsClientId=c)
            colour = [*self.rng.uniform(0.2, 1.0, 3), 1.0]
            pb.changeVisualShape(body, -1, rgbaColor=colour, physicsClientId=c)
            pb.changeDynamics(body, -1, lateralFriction=1.0, mass=0.08, physicsClientId=c)
            self.objects.append(body)
        self.ring_hz = {b: 1400.0 + 500.0 * i for i, b in enumerate(self.objects)}
        self.ring_hz[self.table] = 420.0
        w, h = self.config.image_width, self.config.image_height
        self.view = pb.computeViewMatrix([0.9, 0.6, 0.7], [0.3, 0.0, 0.15], [0, 0, 1])
        self.projection = pb.computeProjectionMatrixFOV(65.0, w / h, 0.1, 3.0)
        for body in self.objects:
            self._place_randomly(body)

    def _place_randomly(self, body: int) -> None:
        x, y = self.rng.uniform(0.4, 0.62), self.rng.uniform(-0.22, 0.22)
        orn = pb.getQuaternionFromEuler([0, 0, float(self.rng.uniform(-0.6, 0.6))])
        pb.resetBasePositionAndOrientation(body, [x, y, 0.026], orn, physicsClientId=self.client)
        pb.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    # ------------------------------------------------------------------ task script
    def _ee_position(self) -> np.ndarray:
        return np.array(pb.getLinkState(self.robot, _GRASP_LINK, physicsClientId=self.client)[4])

    def _object_position(self, body: int) -> np.ndarray:
        return np.array(pb.getBasePositionAndOrientation(body, physicsClientId=self.client)[0])

    def _plan_episode(self) -> list[_Segment]:
        for body in self.objects:        # put back anything pushed off the workspace
            pos = self._object_position(body)
            if not (0.3 < pos[0] < 0.75 and abs(pos[1]) < 0.32 and -0.01 < pos[2] < 0.1):
                self._place_randomly(body)
        kind = self.rng.choice(["reach", "push", "pick", "pick"])
        body = self.objects[int(self.rng.integers(len(self.objects)))]
        obj = self._object_position(body)
        yaw = float(self.rng.uniform(-0.5, 0.5))
        if kind == "reach":
            goal = np.array([self.rng.uniform(0.35, 0.65), self.rng.uniform(-0.25, 0.25), self.rng.uniform(0.12, 0.35)])
            return [_Segment("reach", goal, 0.04, float(self.rng.uniform(1.2, 2.0)), yaw),
                    _Segment("hold", goal, 0.04, 0.5, yaw)]
        if kind == "push":
            direction = self.rng.normal(size=2)
            direction /= np.linalg.norm(direction) + 1e-9
            behind = obj[:2] - 0.07 * direction
            end = obj[:2] + 0.12 * direction
            return [_Segment("approach", np.array([*behind, 0.15]), 0.0, 1.2, yaw),
                    _Segment("descend", np.array([*behind, 0.025]), 0.0, 0.8, yaw),
                    _Segment("push", np.array([*end, 0.025]), 0.0, 1.5, yaw),
                    _Segment("retreat", np.array([*end, 0.2]), 0.04, 0.7, yaw)]
        place = np.array([self.rng.uniform(0.4, 0.62), self.rng.uniform(-0.22, 0.22)])
        return [_Segment("approach", np.array([*obj[:2], 0.14]), 0.04, 1.2, yaw),
                _Segment("descend", np.array([*obj[:2], obj[2]]), 0.04, 0.8, yaw),
                _Segment("grasp", np.array([*obj[:2], obj[2]]), 0.0, 0.5, yaw),
                _Segment("lift", np.array([*obj[:2], 0.22]), 0.0, 0.9, yaw),
                _Segment("transport", np.array([*place, 0.22]), 0.0, 1.4, yaw),
                _Segment("place", np.array([*place, 0.035]), 0.0, 0.8, yaw),
                _Segment("release", np.array([*place, 0.035]), 0.04, 0.4, yaw),
                _Segment("retreat", np.array([*place, 0.2]), 0.04, 0.6, yaw)]

    def _current_segment(self) -> _Segment:
        if not self._plan or self._segment_step >= int(self._plan[0].seconds * self.config.physics_hz):
            if self._plan:
                self._plan.pop(0)
            if not self._plan:
                self._plan = self._plan_episode()
            self._segment_step = 0
            self._segment_start = self._ee_position()
            self._segment_start_q = self._joint_states()[0, :7]
        return self._plan[0]

    def _control(self, segment: _Segment) -> None:
        steps = max(1, int(segment.seconds * self.config.physics_hz))
        s = min(1.0, (self._segment_step + 1) / steps)
        s = s * s * (3 - 2 * s)                                  # smoothstep
        q = self._arm_targets(segment, s)
        forces = list(_ARM_FORCES)
        for fault in self._active:
            if fault.spec.kind == "joint_fault" and self.step_index < fault.extra["recover_at"]:
                joint = fault.extra["joint"]
                forces[joint] = _ARM_FORCES[joint] * 0.04
        pb.setJointMotorControlArray(self.robot, _ARM, pb.POSITION_CONTROL, targetPositions=list(q),
                                     forces=forces, physicsClientId=self.client)
        grip = _GRIP_FORCE * (_DROP_GRIP_SHARE if self._active_kind("object_drop") else 1.0)
        pb.setJointMotorControlArray(self.robot, _FINGERS, pb.POSITION_CONTROL,
                                     targetPositions=[segment.gripper] * 2, forces=[grip, grip],
                                     physicsClientId=self.client)
        self._held = self._holding() if segment.phase in ("lift", "transport", "place") else None

    def _arm_targets(self, segment: _Segment, s: float) -> list[float]:
        """Joint targets at the smoothstep fraction ``s`` of the segment: a straight joint-space move to
        the rest posture for ``recover``, else the IK of the interpolated gripper position."""
        if segment.phase == "recover":
            return list(self._segment_start_q + s * (np.asarray(_REST) - self._segment_start_q))
        target = self._segment_start + s * (segment.target - self._segment_start)
        orn = pb.getQuaternionFromEuler([_DOWN, 0.0, segment.yaw])
        # null-space IK towards the rest posture: the redundant joints do not drift from episode to episode
        q = pb.calculateInverseKinematics(self.robot, _GRASP_LINK, target.tolist(), orn, lowerLimits=_LOWER,
                                          upperLimits=_UPPER, jointRanges=_RANGES, restPoses=_REST + [0.04] * 2,
                                          maxNumIterations=30, physicsClientId=self.client)
        return list(q[:7])

    def _recover(self) -> None:
        """The torque is back, but the sagging arm may have taken the IK to another branch: drop the episode
        and move back to the rest posture in joint space (as a robot homes after a fault); then a new one."""
        self._plan = [_Segment("recover", self._ee_position(), 0.04, _RECOVER_S)]
        self._segment_step = 0
        self._segment_start = self._ee_position()
        self._segment_start_q = self._joint_states()[0, :7]

    def _carrying(self) -> bool:
        """Holding an object on its way to the place (so that a drop is a fall, not a failed lift)."""
        return self._held is not None and self._phase == "transport"

    def _holding(self) -> int | None:
        for body in self.objects:
            touching = [pb.getContactPoints(self.robot, body, linkIndexA=f, physicsClientId=self.client)
                        for f in _FINGERS]
            if all(touching):
                return body
        return None

    # ------------------------------------------------------------------ faults
    def _update_faults(self) -> list[FaultLabel]:
        """Start the faults that are due, end the finished ones; returns the labels of started faults."""
        t = self.step_index * self.dt
        started = []
        self._end_due_faults()
        for spec in [f for f in self._pending_faults if f.start_s <= t]:
            if spec.kind == "object_drop" and not self._carrying():
                if t > spec.start_s + 15.0:          # nothing carried for 15 s: give up on this one
                    self._pending_faults.remove(spec)
                continue                             # wait until the gripper carries something
            if self._active:                          # one fault at a time keeps the labels unambiguous
                continue
            self._pending_faults.remove(spec)
            started.append(self._start_fault(spec).label)
        return started

    def _start_fault(self, spec: FaultSpec) -> _ActiveFault:
        steps = int(round(spec.duration_s * self.config.physics_hz))
        homing = int(round(_RECOVER_S * self.config.physics_hz)) if spec.kind == "joint_fault" else 0
        fault = _ActiveFault(spec, self.step_index, self.step_index + steps + homing)
        detail = dict(spec.detail)
        if spec.kind == "collision":
            fault.body = self._spawn_obstacle()
        elif spec.kind == "object_drop":             # the object loses its grip and slips out of the fingers
            fault.extra["object"] = self._held
            pb.changeDynamics(self._held, -1, lateralFriction=0.02, physicsClientId=self.client)
        elif spec.kind == "joint_fault":
            fault.extra["joint"] = int(self.rng.choice([1, 3]))
            fault.extra["recover_at"] = self.step_index + steps
            detail["joint"] = JOINT_NAMES[fault.extra["joint"]]
        elif spec.kind == "audio_clipping":
            self.audio.gain = 25.0
        elif spec.kind == "audio_noise":
            self.audio.burst = 0.25
        elif spec.kind == "camera_occlusion":
            fault.extra["seed"] = int(self.rng.integers(1 << 30))
        start_ns = self._stamp(self.step_index)
        fault.label = FaultLabel(spec.kind, start_ns, self._stamp(fault.end_step), detail)
        self._active.append(fault)
        self.labels.append(fault.label)
        return fault

    def _end_fault(self, fault: _ActiveFault) -> None:
        self._active.remove(fault)
        if fault.body is not None:
            pb.removeBody(fault.body, physicsClientId=self.client)
            self._contact_force = {k: v for k, v in self._contact_force.items() if fault.body not in k}
        if fault.spec.kind == "object_drop":
            pb.changeDynamics(fault.extra["object"], -1, lateralFriction=1.0, physicsClientId=self.client)
        if fault.spec.kind == "audio_clipping":
            self.audio.gain = 1.0
        if fault.spec.kind == "audio_noise":
            self.audio.burst = 0.0

    def _spawn_obstacle(self) -> int:
        """A box between the gripper and where it is heading, at gripper height."""
        segment = self._plan[0] if self._plan else None
        ee = self._ee_position()
        goal = segment.target if segment is not None else ee + np.array([0.0, 0.1, 0.0])
        where = ee + 0.5 * (goal - ee)
        where[2] = max(where[2], 0.07)
        half = [0.045, 0.045, 0.07]
        shape = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=self.client)
        visual = pb.createVisualShape(pb.GEOM_BOX, halfExtents=half, rgbaColor=[0.9, 0.1, 0.1, 1],
                                      physicsClientId=self.client)
        body = pb.createMultiBody(2.0, shape, visual, where.tolist(), physicsClientId=self.client)
        self.ring_hz[body] = 900.0
        return body

    # ------------------------------------------------------------------ sensors
    def _joint_states(self) -> np.ndarray:
        states = pb.getJointStates(self.robot, _JOINTS, physicsClientId=self.client)
        return np.array([[s[0] for s in states], [s[1] for s in states], [s[3] for s in states]], np.float64)

    def _contacts(self) -> None:
        """Contact impulses -> audio rings (a rise of the normal force of a body pair is an impact)."""
        forces: dict[tuple[int, int], float] = {}
        for point in pb.getContactPoints(physicsClientId=self.client):
            a, b = point[1], point[2]
            if self.robot in (a, b) and self.table in (a, b):
                continue
            key = (min(a, b), max(a, b))
            forces[key] = forces.get(key, 0.0) + max(0.0, point[9])
        for key, force in forces.items():
            rise = force - self._contact_force.get(key, 0.0)
            if rise > 1.5:
                other = key[0] if key[0] != self.table else key[1]
                freq = self.ring_hz.get(other, 1100.0) * float(self.rng.uniform(0.95, 1.05))
                offset = int(self.rng.integers(0, self.config.sample_rate // self.config.physics_hz))
                self.audio.impact(min(0.6, 0.025 * math.sqrt(rise)), freq, offset)
        self._contact_force = forces

    def _tactile(self) -> np.ndarray:
        pads = []
        for link in _FINGERS:
            state = pb.getLinkState(self.robot, link, physicsClientId=self.client)
            inv_pos, inv_orn = pb.invertTransform(state[4], state[5])
            points = []
            for contact in pb.getContactPoints(bodyA=self.robot, linkIndexA=link, physicsClientId=self.client):
                local, _ = pb.multiplyTransforms(inv_pos, inv_orn, contact[5], [0, 0, 0, 1])
                points.append((local[0], local[2], max(0.0, contact[9])))
            pads.append(taxel_grid(points))
        grid = np.stack(pads)
        return np.clip(grid + self.rng.normal(0, 0.004, grid.shape), 0.0, None).astype(np.float32)

    def _camera(self) -> np.ndarray:
        w, h = self.config.image_width, self.config.image_height
        _, _, rgba, _, _ = pb.getCameraImage(w, h, self.view, self.projection, renderer=pb.ER_TINY_RENDERER,
                                             physicsClientId=self.client)
        image = np.asarray(rgba, np.uint8).reshape(h, w, 4)[:, :, :3]
        image = np.clip(image.astype(np.int16) + self.rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
        occlusion = self._active_kind("camera_occlusion")
        if occlusion is not None:
            image = occlude(image, occlusion.extra["seed"])
        if self._active_kind("camera_blackout") is not None:
            image = blackout(image, self.rng)
        return image

    # ------------------------------------------------------------------ main loop
    def events(self, duration_s: float) -> Iterator[SimEvent]:
        """Step the simulation for ``duration_s`` seconds and yield its events in stamp order."""
        cfg = self.config
        steps = int(round(duration_s * cfg.physics_hz))
        samples_per_step = cfg.sample_rate // cfg.physics_hz
        next_camera = 0.0
        for _ in range(steps):
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
            self._contacts()
            joints = self._joint_states()
            self._audio_buffer.append(self.audio.step(joints[1, :7], samples_per_step))
            if not self._dropped("joints"):
                yield SimEvent("joints", stamp, joints)
            if self.step_index % cfg.tactile_every == 0 and not self._dropped("tactile"):
                yield SimEvent("tactile", stamp, self._tactile())
            if self.step_index % cfg.audio_every == 0:
                chunk = np.concatenate(self._audio_buffer)
                self._audio_buffer.clear()
                if not self._dropped("audio"):
                    yield SimEvent("audio", stamp, chunk)
            if self.step_index * self.dt >= next_camera - 1e-9:
                next_camera += 1.0 / cfg.camera_hz
                if not self._dropped("camera"):
                    yield SimEvent("camera", stamp, self._camera())
        for fault in list(self._active):                  # a fault cut short by the end of the run
            self._end_fault(fault)

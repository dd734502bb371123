"""The scene both simulated robots stand in: a plane, a table and the robot on it (PyBullet DIRECT mode),
and what both simulators share: their connection's lifetime, stamps and the fault bookkeeping."""
from __future__ import annotations

from typing import Any

from .quiet import quiet_c_output

with quiet_c_output():           # pybullet prints its build-time banner from C on import
    import pybullet as pb
    import pybullet_data

NS = 1_000_000_000


def table_world(client: int, dt: float, substeps: int, robot_urdf: str) -> tuple[int, int]:
    """Gravity, time step and solver substeps set, the plane, the table and the fixed-base robot loaded;
    (table, robot) body ids. The table top is at z = 0, the robot's base at the origin."""
    pb.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
    pb.setGravity(0, 0, -9.81, physicsClientId=client)
    pb.setTimeStep(dt, physicsClientId=client)
    pb.setPhysicsEngineParameter(numSubSteps=substeps, physicsClientId=client)
    pb.loadURDF("plane.urdf", [0, 0, -0.625], physicsClientId=client)
    table = pb.loadURDF("table/table.urdf", [0.5, 0, -0.625], useFixedBase=True, physicsClientId=client)
    robot = pb.loadURDF(robot_urdf, [0, 0, 0], useFixedBase=True, physicsClientId=client)
    return table, robot


class TableSim:
    """The parts both simulators share. A subclass sets ``client`` (its PyBullet connection), ``config``
    (with ``start_ns`` and ``physics_hz``), ``step_index`` and ``_active`` (its running faults, each with
    ``spec``, ``end_step`` and ``extra``), and defines ``_end_fault`` and ``_recover``."""

    client: int | None
    config: Any
    step_index: int
    _active: list

    def close(self) -> None:
        if self.client is not None and pb.isConnected(self.client):
            pb.disconnect(self.client)
        self.client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stamp(self, step: int) -> int:
        return self.config.start_ns + int(round(step * NS / self.config.physics_hz))

    def _active_kind(self, kind: str):
        return next((f for f in self._active if f.spec.kind == kind), None)

    def _dropped(self, stream: str) -> bool:
        return any(f.spec.kind == "stream_dropout" and f.spec.detail.get("stream") == stream for f in self._active)

    def _end_due_faults(self) -> None:
        """End the faults whose time is up; start the recovery of those that ask for it at this step."""
        for fault in list(self._active):
            if self.step_index >= fault.end_step:
                self._end_fault(fault)
            elif fault.extra.get("recover_at") == self.step_index:
                self._recover()

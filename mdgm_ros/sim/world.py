"""The scene both simulated robots stand in: a plane, a table and the robot on it (PyBullet DIRECT mode)."""
from __future__ import annotations

from .quiet import quiet_c_output

with quiet_c_output():           # pybullet prints its build-time banner from C on import
    import pybullet as pb
    import pybullet_data


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

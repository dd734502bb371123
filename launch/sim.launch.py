"""The simulated Panda and the fusion node on its streams.

    ros2 launch mdgm_ros sim.launch.py [faults:=all] [seed:=0] [real_time_factor:=1.0] [model:=...]

``sim_robot_node`` publishes the four sensor streams (and /sim/fault_labels, /sim/task_phase); the
fusion node (fusion.launch.py, default bundle models/default) fuses them.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("mdgm_ros")
    arguments = [
        DeclareLaunchArgument("faults", default_value="", description="'all' or a comma list of fault kinds"),
        DeclareLaunchArgument("seed", default_value="0", description="simulator seed"),
        DeclareLaunchArgument("real_time_factor", default_value="1.0", description="robot s per wall s"),
        DeclareLaunchArgument("model", default_value=PathJoinSubstitution([share, "models", "default"]),
                              description="model bundle for the fusion node"),
    ]
    sim = Node(
        package="mdgm_ros",
        executable="sim_robot_node",
        name="sim_robot",
        output="screen",
        parameters=[{"faults": ParameterValue(LaunchConfiguration("faults"), value_type=str),
                     "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
                     "real_time_factor": ParameterValue(LaunchConfiguration("real_time_factor"), value_type=float)}],
    )
    fusion = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "fusion.launch.py"])),
        launch_arguments={"model": LaunchConfiguration("model")}.items())
    return LaunchDescription([*arguments, sim, fusion])

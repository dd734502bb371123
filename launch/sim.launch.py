"""The simulated Panda and the fusion node on its streams.

    ros2 launch mdgm_ros sim.launch.py [faults:=all] [seed:=0] [real_time_factor:=1.0] [model:=...]
        [params_file:=...] [namespace:=...] [use_sim_time:=false] [log_level:=info] [autostart:=true]

``sim_robot_node`` publishes the four sensor streams (and /sim/fault_labels, /sim/task_phase) on absolute
topics; the fusion node (fusion.launch.py, default bundle models/default, in ``namespace``) fuses them:
its relative inputs are remapped onto the simulator's topics, so a namespace moves only the outputs.
"""
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, SetRemap
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

SIM_TOPICS = ["camera/image_raw", "joint_states", "audio", "tactile"]   # mdgm_ros.sim.record.TOPICS
FORWARDED = ["model", "params_file", "namespace", "use_sim_time", "log_level", "autostart"]


def generate_launch_description():
    share = FindPackageShare("mdgm_ros")
    arguments = [
        DeclareLaunchArgument("faults", default_value="", description="'all' or a comma list of fault kinds"),
        DeclareLaunchArgument("seed", default_value="0", description="simulator seed"),
        DeclareLaunchArgument("real_time_factor", default_value="1.0", description="robot s per wall s"),
        DeclareLaunchArgument("model", default_value=PathJoinSubstitution([share, "models", "default"]),
                              description="model bundle for the fusion node"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "fusion.yaml"]),
                              description="fusion node parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the fusion node"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="both nodes follow /clock"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error | fatal"),
        DeclareLaunchArgument("autostart", default_value="true", description="the fusion node activates itself"),
    ]
    sim = Node(
        package="mdgm_ros",
        executable="sim_robot_node",
        name="sim_robot",
        output="screen",
        parameters=[{"faults": ParameterValue(LaunchConfiguration("faults"), value_type=str),
                     "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
                     "real_time_factor": ParameterValue(LaunchConfiguration("real_time_factor"), value_type=float),
                     "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
    )
    fusion = GroupAction([
        *[SetRemap(src=topic, dst="/" + topic) for topic in SIM_TOPICS],
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "fusion.launch.py"])),
            launch_arguments={name: LaunchConfiguration(name) for name in FORWARDED}.items()),
    ])
    return LaunchDescription([*arguments, sim, fusion])

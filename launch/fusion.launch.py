"""Start the mdgm_ros fusion node (a lifecycle node that configures and activates itself).

    ros2 launch mdgm_ros fusion.launch.py [model:=/path/to/bundle] [params_file:=...] [namespace:=...]
        [use_sim_time:=true] [log_level:=debug] [autostart:=false] [device:=cuda]

``model`` defaults to the shipped bundle ``models/default`` (trained on the simulator, see models/README.md).
With ``autostart:=false`` the node waits for a lifecycle manager to configure and activate it. Input
topics in the params file are relative, so ``namespace`` moves inputs and outputs together.
"""
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("model", default_value=PathJoinSubstitution(
            [FindPackageShare("mdgm_ros"), "models", "default"]),
            description="model bundle folder (see `mdgm-ros info`)"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution(
            [FindPackageShare("mdgm_ros"), "config", "fusion.yaml"]), description="fusion node parameters"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node (inputs and outputs)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error | fatal"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at start (false: leave it to a lifecycle manager)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda | cuda:N"),
    ]
    fusion = LifecycleNode(
        package="mdgm_ros",
        executable="fusion_node",
        name="mdgm_fusion",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {"bundle": ParameterValue(LaunchConfiguration("model"), value_type=str),
             "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
             "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
             "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)},
        ],
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*arguments, fusion])

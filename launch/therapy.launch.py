"""ros2 launch fer_ros therapy.launch.py [source:=0] [backend:=onnxruntime] [model:=/path/m.onnx]

Starts camera_node, expression_node and therapy_node with config/therapy.yaml. The node set
(executables, parameters set from arguments, remappings) is defined once in
fer_ros/ros/node_set.py, which `fer-ros launch therapy` uses too.
Topics are remappable: image_topic:=..., expressions_topic:=..., annotated_topic:=...
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from fer_ros.ros.node_set import CONFIG_NAME, LAUNCH_ARGUMENTS, NODES, PACKAGE, argument_defaults


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory(PACKAGE), "config", CONFIG_NAME)
    defaults = argument_defaults(default_config)
    actions = [DeclareLaunchArgument("config", default_value=default_config,
                                     description="parameter YAML with one section per node")]
    actions += [DeclareLaunchArgument(name, default_value=defaults[name], description=description)
                for name, (_, description) in LAUNCH_ARGUMENTS.items()]
    for spec in NODES:
        overrides = {param: ParameterValue(LaunchConfiguration(arg), value_type=str)
                     for param, arg in spec.arguments}
        actions.append(Node(
            package=PACKAGE, executable=spec.executable, name=spec.name, output="screen",
            parameters=[LaunchConfiguration("config")] + ([overrides] if overrides else []),
            remappings=[(topic, LaunchConfiguration(arg)) for topic, arg in spec.remappings],
        ))
    return LaunchDescription(actions)

"""ros2 launch fer_ros therapy.launch.py [source:=0] [backend:=onnxruntime] [model:=/path/m.onnx]

Starts camera_node, expression_node and therapy_node with config/therapy.yaml. The node set
(executables, parameters set from arguments, remappings) is defined once in
fer_ros/ros/node_set.py, which `fer-ros launch therapy` uses too.
Topics are remappable: image_topic:=..., expressions_topic:=..., annotated_topic:=...
expression_node is a lifecycle node: it starts with autostart false and this file configures it,
then activates it once configured (as launch_ros' lifecycle example does). hri:=true adds the
REP-155 bridge. FASTDDS_BUILTIN_TRANSPORTS defaults to fer_ros.ros.dds.TRANSPORTS for the nodes.
`ros2 launch fer_ros therapy.launch.py --show-args` lists every argument.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

from fer_ros.ros.dds import ENV_VAR, TRANSPORTS
from fer_ros.ros.node_set import CONFIG_NAME, LAUNCH_ARGUMENTS, NODES, PACKAGE, argument_defaults


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory(PACKAGE), "config", CONFIG_NAME)
    defaults = argument_defaults(default_config)
    actions = [DeclareLaunchArgument("config", default_value=default_config,
                                     description="parameter YAML with one section per node")]
    actions += [DeclareLaunchArgument(name, default_value=defaults[name], description=description)
                for name, (_, description) in LAUNCH_ARGUMENTS.items()]
    # Images between the nodes: Fast DDS's large-data transport unless the user set one.
    actions.append(SetEnvironmentVariable(ENV_VAR, EnvironmentVariable(ENV_VAR, default_value=TRANSPORTS)))
    for spec in NODES:
        overrides = {param: ParameterValue(LaunchConfiguration(arg), value_type=str)
                     for param, arg in spec.arguments}
        node = dict(
            package=PACKAGE, executable=spec.executable, name=spec.name, output="screen",
            parameters=[LaunchConfiguration("config")] + ([overrides] if overrides else []),
            remappings=[(topic, LaunchConfiguration(arg)) for topic, arg in spec.remappings],
            condition=IfCondition(LaunchConfiguration(spec.condition)) if spec.condition else None,
        )
        if not spec.lifecycle:
            actions.append(Node(**node))
            continue
        node["parameters"].append({"autostart": False})  # launch drives the transitions
        lifecycle_node = LifecycleNode(namespace="", **node)
        actions += [
            # Activate when a configure completes (not after a later `ros2 lifecycle set ... deactivate`).
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=lifecycle_node, start_state="configuring", goal_state="inactive",
                entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(lifecycle_node),
                                                      transition_id=Transition.TRANSITION_ACTIVATE))])),
            lifecycle_node,
            EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(lifecycle_node),
                                        transition_id=Transition.TRANSITION_CONFIGURE)),
        ]
    return LaunchDescription(actions)

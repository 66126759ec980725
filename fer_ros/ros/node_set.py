"""The one definition of the therapy node set, used by both `launch/therapy.launch.py`
(ros2 launch, on a ROS 2 install) and `fer-ros launch therapy` (here, without `launch`).

Each node gets, in this order: the YAML config (its own `<node name>:` section), then the
launch arguments mapped to its parameters, then topic remappings whose targets are launch
arguments. Keep this module free of `launch` imports so both users can load it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "fer_ros"
CONFIG_NAME = "therapy.yaml"

# Launch arguments: name -> (fallback default, description). The arguments that set a
# parameter (source, backend, model) default to that parameter's value in the YAML config
# (see argument_defaults), so the YAML decides unless the argument is given.
LAUNCH_ARGUMENTS = {
    "source": ("demo", "camera_node source: demo, a webcam index (0) or /dev/videoN, a video file, an image folder"),
    "backend": ("auto", "expression_node classifier backend: auto, onnxruntime, tensorrt, torch"),
    "model": ("", "expression model .onnx path (empty: the model shipped with fer_ros)"),
    "image_topic": ("/camera/image_raw", "image topic between camera_node and expression_node"),
    "expressions_topic": ("/faces/expressions", "FaceExpressionArray topic of expression_node"),
    "annotated_topic": ("/faces/image_annotated", "annotated image topic of expression_node"),
    "session_log_dir": ("~/.ros/fer_ros/therapy_sessions", "folder where therapy_node writes session logs"),
    "hri": ("false", "also start hri_bridge: REP-155 (ROS4HRI) /humans/faces/tracked and "
                     "/humans/faces/<id>/expression (needs hri_msgs)"),
    # launch_ros reads this one itself (ExecuteProcess); `fer-ros launch` waits as long.
    "sigterm_timeout": ("15", "seconds each node may take to stop after Ctrl-C (therapy_node writes its "
                              "session report) before it is sent SIGTERM"),
    "dashboard": ("true", "serve the therapist's web dashboard (dashboard_node; its URL is printed at start)"),
}


@dataclass(frozen=True)
class NodeSpec:
    name: str                      # ROS node name, also its section in the YAML config
    executable: str                # `ros2 run fer_ros <executable>`; on the venv's PATH
    module: str                    # Python module whose main() the executable runs
    arguments: tuple = field(default=())   # (parameter, launch argument)
    remappings: tuple = field(default=())  # (topic as the node names it, launch argument)
    lifecycle: bool = False        # ros2 launch starts it with autostart false and configures + activates it
    condition: str = ""            # launch argument (true/false) that starts the node; "": always


NODES = (
    NodeSpec("camera_node", "camera_node", "fer_ros.ros.camera_node",
             arguments=(("source", "source"),),
             remappings=(("camera/image_raw", "image_topic"),), lifecycle=True),
    NodeSpec("expression_node", "expression_node", "fer_ros.ros.expression_node",
             arguments=(("backend", "backend"), ("model_path", "model")),
             remappings=(("camera/image_raw", "image_topic"), ("faces/expressions", "expressions_topic"),
                         ("faces/image_annotated", "annotated_topic")), lifecycle=True),
    NodeSpec("therapy_node", "therapy_node", "fer_ros.ros.therapy_node",
             arguments=(("log_dir", "session_log_dir"),),
             remappings=(("faces/expressions", "expressions_topic"),)),
    NodeSpec("dashboard_node", "dashboard_node", "fer_ros.ros.dashboard_node",
             arguments=(("log_dir", "session_log_dir"),),
             remappings=(("faces/expressions", "expressions_topic"), ("faces/image_annotated", "annotated_topic")),
             condition="dashboard"),
)


# Optional nodes: started only when their condition (a launch argument) is true.
NODES += (
    NodeSpec("hri_bridge", "hri_bridge", "fer_ros.ros.hri_bridge",
             remappings=(("faces/expressions", "expressions_topic"),), condition="hri"),
)


def is_true(value) -> bool:
    """A boolean launch argument as `ros2 launch` reads it (IfCondition): true/false/1/0."""
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {value!r}")
    return text in ("true", "1")


def source_config() -> Path:
    """config/therapy.yaml beside this package (exists in a source checkout)."""
    return Path(__file__).resolve().parents[2] / "config" / CONFIG_NAME


def default_config() -> Path:
    """The config to use: the checkout's when running from source, else the installed
    share/fer_ros/config copy (ament index, or this interpreter's prefix for the .venv)."""
    if source_config().is_file():
        return source_config()
    candidates = [Path(sys.prefix) / "share" / PACKAGE / "config" / CONFIG_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.insert(0, Path(get_package_share_directory(PACKAGE)) / "config" / CONFIG_NAME)
    except Exception:  # not in the ament index (e.g. AMENT_PREFIX_PATH unset in the .venv)
        pass
    return next((c for c in candidates if c.is_file()), candidates[-1])


def load_config(config: str | Path) -> dict:
    """{node name: {parameter: value}} from a ROS 2 parameter YAML (nested keys joined by '.')."""
    import yaml

    with open(config) as f:
        data = yaml.safe_load(f) or {}

    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    result = {}
    for node, section in data.items():
        name = str(node).lstrip("/")
        params = (section or {}).get("ros__parameters", {}) if isinstance(section, dict) else {}
        result[name] = flat(params)
    return result


def argument_defaults(config: str | Path | None) -> dict:
    """Default of every launch argument: the YAML value of the parameter it sets, else the
    fallback in LAUNCH_ARGUMENTS."""
    values = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    params = load_config(config) if config and Path(config).is_file() else {}
    for spec in NODES:
        for param, arg in spec.arguments:
            if param in params.get(spec.name, {}):
                values[arg] = str(params[spec.name][param])
    return values


def ros_args(spec: NodeSpec, config: str | Path | None, values: dict, log_level: str | None = None) -> list:
    """`--ros-args ...` for one node: the config, its parameters set from the launch argument
    `values` (missing: argument_defaults(config)), and its remappings."""
    values = {**argument_defaults(config), **values}
    args = ["--ros-args", "-r", f"__node:={spec.name}"]
    if config:
        args += ["--params-file", str(config)]
    for param, arg in spec.arguments:
        args += ["-p", f"{param}:={json.dumps(str(values[arg]))}"]  # quoted: "0" stays a string
    for topic, arg in spec.remappings:
        args += ["-r", f"{topic}:={values[arg]}"]
    if log_level:
        args += ["--log-level", log_level]
    return args

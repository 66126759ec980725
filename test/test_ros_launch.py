"""launch/therapy.launch.py (ros2 launch) and `fer-ros launch therapy` (here) start the same
nodes: same executables, node names, config, parameters set from launch arguments, remappings.

The launch file runs against small stand-ins of `launch`/`launch_ros` that record what it asks
for (so this runs without them); substitutions are then resolved with the argument values.
test_ros_launch_real.py runs the real `ros2 launch` where the vendored sources are installed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import REPO, shared_dir

from fer_ros.ros import node_set
from fer_ros.ros.dds import TRANSPORTS, large_data_env

LAUNCH_FILE = REPO / "launch" / "therapy.launch.py"


class Recorded:
    def __init__(self, kind, *args, **kwargs):
        self.kind, self.args, self.kwargs = kind, args, kwargs


class LaunchConfiguration:
    def __init__(self, name):
        self.name = name


class ParameterValue:
    def __init__(self, value, value_type=None):
        self.value, self.value_type = value, value_type


def stub_modules(share: Path) -> dict:
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    return {
        "launch": mod("launch", LaunchDescription=lambda actions: Recorded("description", actions)),
        "launch.actions": mod("launch.actions", DeclareLaunchArgument=lambda name, **kw: Recorded("argument", name, **kw),
                              EmitEvent=lambda **kw: Recorded("emit", **kw),
                              RegisterEventHandler=lambda handler: Recorded("handler", handler),
                              SetEnvironmentVariable=lambda name, value: Recorded("setenv", name, value)),
        "launch.conditions": mod("launch.conditions", IfCondition=lambda value: Recorded("if", value)),
        "launch.events": mod("launch.events", matches_action=lambda action: Recorded("matches", action)),
        "launch.substitutions": mod("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
                                    EnvironmentVariable=lambda name, **kw: Recorded("env", name, **kw)),
        "launch_ros": mod("launch_ros"),
        "launch_ros.actions": mod("launch_ros.actions", Node=lambda **kw: Recorded("node", **kw),
                                  LifecycleNode=lambda **kw: Recorded("node", lifecycle=True, **kw)),
        "launch_ros.event_handlers": mod("launch_ros.event_handlers",
                                         OnStateTransition=lambda **kw: Recorded("on_state", **kw)),
        "launch_ros.events": mod("launch_ros.events"),
        "launch_ros.events.lifecycle": mod("launch_ros.events.lifecycle",
                                           ChangeState=lambda **kw: Recorded("change_state", **kw)),
        "launch_ros.parameter_descriptions": mod("launch_ros.parameter_descriptions", ParameterValue=ParameterValue),
        "ament_index_python": mod("ament_index_python"),
        "ament_index_python.packages": mod("ament_index_python.packages",
                                           get_package_share_directory=lambda pkg: str(share)),
    }


def load_launch_description(monkeypatch, tmp_path):
    share = tmp_path / "share" / "fer_ros"
    (share / "config").mkdir(parents=True)
    (share / "config" / "therapy.yaml").write_text((REPO / "config" / "therapy.yaml").read_text())
    for name, module in stub_modules(share).items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace = {"__file__": str(LAUNCH_FILE), "__name__": "therapy_launch"}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec"), namespace)
    return namespace["generate_launch_description"](), share / "config" / "therapy.yaml"


def resolve(value, args):
    if isinstance(value, LaunchConfiguration):
        return args[value.name]
    if isinstance(value, ParameterValue):
        assert value.value_type is str  # so "0" (a webcam index) stays a string
        return resolve(value.value, args)
    return value


def launch_file_plan(description, overrides):
    """{node name: (executable, params file, {param: value}, [(from, to)])} with the launch
    arguments resolved as `ros2 launch ... name:=value` would."""
    declared = {a.args[0]: a.kwargs for a in description.args[0] if a.kind == "argument"}
    args = {name: kw["default_value"] for name, kw in declared.items()}
    args.update(overrides)
    plan = {}
    for node in (a for a in description.args[0] if a.kind == "node"):
        kw = node.kwargs
        assert kw["package"] == "fer_ros"
        if kw["condition"] is not None and not node_set.is_true(resolve(kw["condition"].args[0], args)):
            continue
        files = [resolve(p, args) for p in kw["parameters"] if not isinstance(p, dict)]
        params = {k: resolve(v, args) for p in kw["parameters"] if isinstance(p, dict) for k, v in p.items()}
        if kw.get("lifecycle"):  # launch drives its transitions; `fer-ros launch` leaves autostart on
            assert params.pop("autostart") is False
        remaps = [(resolve(a, args), resolve(b, args)) for a, b in kw["remappings"]]
        plan[kw["name"]] = (kw["executable"], files, params, remaps)
    return declared, plan


def launcher_plan(config, overrides):
    """The same, parsed from the argv that `fer-ros launch therapy` runs."""
    from fer_ros.ros import launcher

    values = {**node_set.argument_defaults(config), **overrides}
    plan = {}
    for spec, argv in launcher.plan(config, values):
        assert argv[:3] == [sys.executable, "-m", spec.module]
        ros = argv[argv.index("--ros-args") + 1:]
        pairs = list(zip(ros[::2], ros[1::2]))
        assert len(pairs) * 2 == len(ros), ros
        name = next(v.split(":=")[1] for k, v in pairs if k == "-r" and v.startswith("__node:="))
        files = [v for k, v in pairs if k == "--params-file"]
        params = {v.split(":=")[0]: json.loads(v.split(":=", 1)[1]) for k, v in pairs if k == "-p"}
        remaps = [tuple(v.split(":=")) for k, v in pairs if k == "-r" and not v.startswith("__node:=")]
        plan[name] = (spec.executable, files, params, remaps)
    return plan


@pytest.mark.parametrize("overrides", [{}, {"source": "0", "backend": "onnxruntime", "model": "/m/x.onnx",
                                            "image_topic": "/robot/head_camera/image"}])
def test_launch_file_and_local_launcher_agree(monkeypatch, tmp_path, overrides):
    description, config = load_launch_description(monkeypatch, tmp_path)
    declared, from_launch_file = launch_file_plan(description, overrides)
    from_launcher = launcher_plan(config, overrides)
    assert from_launch_file == from_launcher
    # and both are the full node set, with the arguments the issue asks for
    assert sorted(from_launcher) == ["camera_node", "dashboard_node", "expression_node", "therapy_node"]
    assert {"source", "backend", "model", "config"} <= set(declared)
    assert all(kw.get("description") for kw in declared.values())
    camera, expression = from_launcher["camera_node"], from_launcher["expression_node"]
    assert camera[0] == "camera_node" and expression[0] == "expression_node"
    assert camera[2]["source"] == overrides.get("source", "demo")
    assert expression[2]["backend"] == overrides.get("backend", "auto")
    topic = overrides.get("image_topic", "/camera/image_raw")
    assert ("camera/image_raw", topic) in camera[3] and ("camera/image_raw", topic) in expression[3]


def test_lifecycle_node_is_configured_then_activated_and_hri_is_optional(monkeypatch, tmp_path):
    """camera_node and expression_node are LifecycleNodes that the launch file configures, and
    activates once a configure completes (not after a later deactivate); hri:=true adds the
    REP-155 bridge in both."""
    description, config = load_launch_description(monkeypatch, tmp_path)
    actions = description.args[0]
    lifecycle = [a for a in actions if a.kind == "node" and a.kwargs.get("lifecycle")]
    assert [a.kwargs["name"] for a in lifecycle] == ["camera_node", "expression_node"]
    emitted = [a.kwargs["event"] for a in actions if a.kind == "emit"]
    assert [e.kwargs["transition_id"] for e in emitted] == [1, 1]  # Transition.TRANSITION_CONFIGURE
    handlers = [a.args[0] for a in actions if a.kind == "handler"]
    for node, event, handler in zip(lifecycle, emitted, handlers, strict=True):
        assert event.kwargs["lifecycle_node_matcher"].args[0] is node
        assert handler.kwargs["target_lifecycle_node"] is node
        assert (handler.kwargs["start_state"], handler.kwargs["goal_state"]) == ("configuring", "inactive")
        assert [e.kwargs["event"].kwargs["transition_id"] for e in handler.kwargs["entities"]] == [3]  # ACTIVATE
    for hri, expected in (("false", False), ("true", True)):
        _, from_launch_file = launch_file_plan(description, {"hri": hri})
        from_launcher = launcher_plan(config, {"hri": hri})
        assert from_launch_file == from_launcher
        assert ("hri_bridge" in from_launcher) is expected
    with pytest.raises(ValueError):
        launcher_plan(config, {"hri": "maybe"})


def test_both_launchers_give_the_nodes_the_large_data_transport_unless_the_user_chose_one(monkeypatch, tmp_path):
    description, _ = load_launch_description(monkeypatch, tmp_path)
    actions = description.args[0]
    setenv = [a for a in actions if a.kind == "setenv"]
    assert len(setenv) == 1 and actions.index(setenv[0]) < min(i for i, a in enumerate(actions) if a.kind == "node")
    name, value = setenv[0].args
    assert name == value.args[0] == "FASTDDS_BUILTIN_TRANSPORTS" and value.kwargs == {"default_value": TRANSPORTS}
    from fer_ros import cli
    from fer_ros.ros import launcher

    monkeypatch.setattr(launcher.subprocess, "Popen", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError(kw["env"])))
    for users, expected in ((None, TRANSPORTS), ("DEFAULT", "DEFAULT")):
        if users is None:
            monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
        else:
            monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", users)
        with pytest.raises(RuntimeError) as started:
            cli.main(["launch", "therapy", "--output", str(tmp_path / "run"), "--nodes", "camera_node"])
        assert started.value.args[0]["FASTDDS_BUILTIN_TRANSPORTS"] == expected
        # ... and the recorder, in the launcher's own process: with the default transports it
        # discovered none of the LARGE_DATA nodes and recorded nothing.
        assert os.environ["FASTDDS_BUILTIN_TRANSPORTS"] == expected


def test_argument_defaults_come_from_the_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("camera_node:\n  ros__parameters:\n    source: '2'\n"
                      "expression_node:\n  ros__parameters:\n    backend: onnxruntime\n    qos:\n      depth: 3\n")
    values = node_set.argument_defaults(config)
    assert values["source"] == "2" and values["backend"] == "onnxruntime" and values["model"] == ""
    assert node_set.load_config(config)["expression_node"]["qos.depth"] == 3


def test_every_node_module_has_main_and_the_yaml_names_declared_parameters():
    """The YAML sections of camera_node and expression_node only set declared parameters
    (a typo there would otherwise be silently ignored by ROS)."""
    import importlib

    from fer_ros.ros import camera_node
    from fer_ros.ros import expression_node

    for spec in node_set.NODES:
        if importlib.util.find_spec(spec.module) is not None:
            assert callable(getattr(importlib.import_module(spec.module), "main"))
    config = node_set.load_config(REPO / "config" / "therapy.yaml")
    for module in (camera_node, expression_node):
        name = module.__name__.split(".")[-1]
        declared = {p.name for p in module.PARAMS}
        assert set(config[name]) <= declared, set(config[name]) - declared
        assert all(p.description for p in module.PARAMS)


@pytest.mark.skipif(not (shared_dir() / "media").exists(), reason="shared data missing")
def test_local_launcher_runs_the_demo_and_records(tmp_path):
    """`fer-ros launch therapy` end to end: demo camera -> expression node -> recorder; the
    annotated video and the JSON-lines results are written and the face is found."""
    # Apart from the other ROS tests' domains (1-100), and outside Linux's ephemeral port range
    # (32768-60999): domains 102-214 put DDS ports there, where other sockets can hold them;
    # and apart from test_ros_launch_run's (224-232).
    from fer_ros.perception.classifier import default_model_path

    model = []
    if not default_model_path().is_file():
        from test_ros_nodes import model_for_tests

        model = ["--model", model_for_tests(tmp_path)]
    # Fast DDS (3.2, LARGE_DATA) now and then leaves two of the three processes without ever
    # finding each other's topics for the whole run (2 of 57 runs on the busy 2-core
    # machine, 6 Dec). The launcher and the node then say that no publisher was found; that one
    # outcome, the middleware's and not fer_ros', gets a second run on a fresh domain.
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        env = large_data_env(dict(os.environ, ROS_DOMAIN_ID=str(random.randint(215, 223))))
        cmd = [sys.executable, "-m", "fer_ros.cli", "launch", "therapy", "--nodes", "camera_node,expression_node",
               "--duration", "12", "--record", "--output", str(out), "--backend", "onnxruntime"] + model
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
        said = proc.stdout + proc.stderr
        if "no publisher of it was found" not in said and "no publisher of /camera/image_raw is known" not in said:
            break
    assert proc.returncode == 0, said
    assert str(out) in proc.stdout
    logs = {p.name for p in out.iterdir()}
    # On failure show what the launcher and the nodes said (the recorder prints its frame counts).
    assert {"camera_node.log", "expression_node.log", "expressions.jsonl", "annotated.mp4"} <= logs, \
        f"files {sorted(logs)} (attempt {attempt + 1})\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    results = [json.loads(line) for line in (out / "expressions.jsonl").read_text().splitlines()]
    assert len(results) >= 30, f"only {len(results)} results in 12 s\n{proc.stdout}"
    with_face = [r for r in results if len(r["faces"]) == 1]
    assert len(with_face) >= 0.8 * len(results)
    assert len({f["face_id"] for r in with_face for f in r["faces"]}) <= 3  # one person keeps an id
    import cv2

    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) >= 30 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 640


def test_the_recorder_subscribes_again_to_a_quiet_topic_and_records_what_then_arrives(monkeypatch, tmp_path):
    """The recorder's watchdog: nothing is renewed while no publisher exists; a publisher that
    sends nothing gets a new subscription on each topic; what is sent afterwards is recorded."""
    import time

    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")
    import numpy as np
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from fer_ros.msg import FaceExpression, FaceExpressionArray
    from fer_ros.ros.image import bgr_to_image_msg
    from fer_ros.ros.launcher import Recorder

    domain = random.randint(1, 100)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setattr(Recorder, "RESUBSCRIBE_AFTER", 0.5)
    values = {"annotated_topic": "/recorder_test/image", "expressions_topic": "/recorder_test/faces"}
    recorder = Recorder(tmp_path, values)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("recorder_test_publisher", context=context)
    try:
        time.sleep(2.0)
        assert recorder.resubscriptions == 0, "resubscribed with no publisher known"
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub_image = node.create_publisher(Image, values["annotated_topic"], qos)
        pub_faces = node.create_publisher(FaceExpressionArray, values["expressions_topic"], qos)
        deadline = time.monotonic() + 15
        while min(q.count for q in recorder._quiet.values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(q.count >= 1 for q in recorder._quiet.values()), "a silent topic was not subscribed again"
        assert recorder.frames == recorder.results == 0
        frame = bgr_to_image_msg(np.full((48, 64, 3), 128, np.uint8))
        faces = FaceExpressionArray(faces=[FaceExpression(face_id=7, expression="happy", confidence=0.9)])
        deadline = time.monotonic() + 15
        while (recorder.frames == 0 or recorder.results == 0) and time.monotonic() < deadline:
            pub_image.publish(frame)
            pub_faces.publish(faces)
            time.sleep(0.2)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        recorder.close()
    assert recorder.frames > 0 and recorder.results > 0
    assert (tmp_path / "annotated.mp4").stat().st_size > 0
    first = json.loads((tmp_path / "expressions.jsonl").read_text().splitlines()[0])
    assert first["faces"][0]["face_id"] == 7 and first["faces"][0]["expression"] == "happy"

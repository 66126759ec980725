"""expression_node as a lifecycle node, driven through its lifecycle services (what
`ros2 lifecycle set /expression_node ...` calls), and its diagnostics of large frames."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")
pytest.importorskip("fer_ros.msg", reason="fer_ros messages not built (run `make build`)")
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from fer_ros.msg import FaceExpressionArray  # noqa: E402
from fer_ros.ros.image import bgr_to_image_msg  # noqa: E402
from fer_ros.ros.dds import large_data_env  # noqa: E402

from conftest import ros_context  # noqa: E402

DOMAIN = random.randint(101, 200)
large_data_env()
NODE = "lifecycle_expression_node"
TOPIC = "/lifecycle_test/image"


@pytest.fixture(scope="module")
def ros():
    yield from ros_context(DOMAIN)


def face_image(i: int, width=160, height=160):
    header = Header(frame_id="lc")
    header.stamp.sec, header.stamp.nanosec = 7000 + i, 0
    bgr = np.random.default_rng(i).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return bgr_to_image_msg(bgr, header=header)


def call(client, request, timeout=10.0):
    assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
    future = client.call_async(request)
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert future.done(), f"no answer from {client.srv_name}"
    return future.result()


def results_while_publishing(pub, received, seconds=1.5):
    """Publish an image every 50 ms for `seconds`; the stamps of the results that came back."""
    received.clear()
    for i in range(int(seconds / 0.05)):
        pub.publish(face_image(i))
        time.sleep(0.05)
    time.sleep(0.3)
    return [r.header.stamp.sec for r in received]


def test_lifecycle_services_configure_activate_deactivate_cleanup(ros):
    from fer_ros.ros.expression_node import ExpressionNode

    context, executor = ros
    node = ExpressionNode(params={"autostart": False, "detector": "whole", "backend": "onnxruntime",
                                  "image_topic": TOPIC}, node_name=NODE, context=context)
    client = rclpy.create_node("lifecycle_client", context=context)
    received = []
    client.create_subscription(FaceExpressionArray, "/faces/expressions", received.append,
                               QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    pub = client.create_publisher(Image, TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    change = client.create_client(ChangeState, f"/{NODE}/change_state")
    get = client.create_client(GetState, f"/{NODE}/get_state")
    executor.add_node(node)
    executor.add_node(client)

    def set_state(transition):
        return call(change, ChangeState.Request(transition=Transition(id=transition))).success

    def state():
        return call(get, GetState.Request()).current_state.label

    def diag():
        return {kv.key: kv.value for kv in node.diagnostics().values}

    try:
        # autostart false: nothing loaded, nothing subscribed until told
        assert state() == "unconfigured" and node.pipeline is None and node.sub is None
        assert diag()["lifecycle_state"] == "unconfigured"
        assert set_state(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
        assert node.pipeline is not None and node.sub is None
        assert diag()["lifecycle_state"] == "inactive"
        assert results_while_publishing(pub, received) == []

        assert set_state(Transition.TRANSITION_ACTIVATE) and state() == "active"
        deadline = time.monotonic() + 10
        while node.count_publishers(TOPIC) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        stamps = results_while_publishing(pub, received, seconds=3.0)
        assert len(stamps) >= 5, stamps
        assert all(len(r.faces) == 1 for r in received)  # detector 'whole': the image is the face
        assert diag()["lifecycle_state"] == "active"

        assert set_state(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
        assert node.sub is None and node.pipeline is not None
        processed = node.stats["processed"]
        assert results_while_publishing(pub, received) == []
        assert node.stats["processed"] == processed
        assert node.diagnostics().message.startswith("inactive")

        assert set_state(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
        assert node.pipeline is None and node.pub is None
        # and back: a cleaned-up node can be configured and activated again
        assert set_state(Transition.TRANSITION_CONFIGURE) and set_state(Transition.TRANSITION_ACTIVATE)
        assert len(results_while_publishing(pub, received, seconds=3.0)) >= 5
    finally:
        executor.remove_node(node)
        executor.remove_node(client)
        node.destroy_node()
        client.destroy_node()


def test_a_bad_model_fails_configure_and_the_node_stays_unconfigured(ros, tmp_path):
    """Through the lifecycle service a bad parameter is a failed transition (the node keeps
    running and says why in diagnostics), not a crash."""
    from fer_ros.ros.expression_node import ExpressionNode

    context, _ = ros
    node = ExpressionNode(params={"autostart": False, "model_path": str(tmp_path / "missing.onnx"),
                                  "backend": "onnxruntime"}, node_name="bad_model_node", context=context)
    try:
        from rclpy.lifecycle import TransitionCallbackReturn

        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.lifecycle_state == "unconfigured" and node.pipeline is None
        status = node.diagnostics()
        assert status.level == status.ERROR and "missing.onnx" in status.message
    finally:
        node.destroy_node()


@pytest.mark.parametrize("width,height", [(3840, 2160), (2560, 1440)])
def test_large_frames_are_processed_and_reported_in_diagnostics(ros, width, height):
    """A 4K frame in-process: processed (boxes in full-resolution pixels), and counted as large
    with a hint to downscale at the camera, since over best-effort QoS most such frames are lost."""
    from fer_ros.ros.expression_node import ExpressionNode

    context, _ = ros
    node = ExpressionNode(params={"detector": "whole", "backend": "onnxruntime"}, subscribe=False,
                          node_name="large_frame_node", context=context)
    try:
        out = node.process_image(face_image(1, width, height), publish=False)
        assert (out.image_width, out.image_height) == (width, height)
        assert (out.faces[0].box.width, out.faces[0].box.height) == (width, height)
        values = {kv.key: kv.value for kv in node.diagnostics().values}
        assert values["frames_large"] == "1" and values["last_frame_size"] == f"{width}x{height}"
        status = node.diagnostics()
        assert status.level == status.WARN and "max_width" in status.message
        node.process_image(face_image(2), publish=False)  # small frames are not counted
        assert {kv.key: kv.value for kv in node.diagnostics().values}["frames_large"] == "1"
    finally:
        node.destroy_node()


@pytest.mark.parametrize("max_width,expected", [(None, (1080, 1920)), (1280, (720, 1280)), (0, (2160, 3840))])
def test_camera_node_downscales_4k_frames_to_max_width(ros, tmp_path, max_width, expected):
    """camera_node keeps frames small enough to cross best-effort QoS: a 4K image leaves it at
    max_width (default 1920) with its aspect ratio; 0 keeps the full size."""
    import cv2

    from fer_ros.ros.camera_node import CameraNode

    ramp = np.linspace(0, 255, 3840, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "4k.jpg"), np.dstack([np.tile(ramp, (2160, 1))] * 3))
    params = [rclpy.parameter.Parameter("source", value=str(tmp_path))]
    if max_width is not None:
        params.append(rclpy.parameter.Parameter("max_width", value=max_width))
    context, _ = ros
    node = CameraNode(parameter_overrides=params, context=context)
    try:
        frame = node.read_frame()
        assert frame.shape == (*expected, 3)
        assert frame[:, 0].mean() < 20 and frame[:, -1].mean() > 235  # the same picture, scaled
    finally:
        node.destroy_node()


def test_camera_node_releases_its_source_on_deactivate(ros, tmp_path):
    """camera_node as a lifecycle node: nothing opened until configured; deactivate stops
    publishing and releases the capture (a webcam is then free for other programs)."""
    import cv2

    from fer_ros.ros.camera_node import CameraNode

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, dtype=np.uint8))
    writer.release()
    context, _ = ros
    node = CameraNode(parameter_overrides=[rclpy.parameter.Parameter("source", value=str(video)),
                                           rclpy.parameter.Parameter("autostart", value=False)], context=context)
    try:
        assert node.lifecycle_state == "unconfigured" and node.cap is None and node.pub is None
        assert {kv.key: kv.value for kv in node.diagnostics().values}["lifecycle_state"] == "unconfigured"
        node.trigger_configure()
        node.trigger_activate()
        assert node.lifecycle_state == "active" and node.timer is not None
        cap = node.cap
        assert cap.isOpened() and node.read_frame().shape == (48, 64, 3)
        node.trigger_deactivate()
        assert node.lifecycle_state == "inactive" and node.cap is None and node.timer is None
        assert not cap.isOpened()  # released
        assert node.diagnostics().message.startswith("inactive")
        node.trigger_activate()  # reopened
        assert node.cap.isOpened() and node.read_frame().shape == (48, 64, 3)
    finally:
        node.destroy_node()


def test_expression_node_gives_the_gpu_back_on_deactivate(ros, tmp_path, monkeypatch):
    """Deactivate releases the TensorRT engine, its buffers and the CUDA context (another program
    may use the GPU meanwhile); activate takes them again without rebuilding; cleanup frees all."""
    import trt_stand_ins
    from conftest import make_onnx_model

    from fer_ros.ros.expression_node import ExpressionNode

    trt, driver, calls = trt_stand_ins.install(monkeypatch, "11.4.0")
    monkeypatch.setenv("FER_ROS_ENGINE_CACHE", str(tmp_path / "engines"))
    model = make_onnx_model(tmp_path / "m.onnx")
    context, _ = ros
    node = ExpressionNode(params={"detector": "whole", "backend": "tensorrt", "model_path": str(model),
                                  "autostart": False}, subscribe=False, node_name="gpu_release_node",
                          context=context)
    try:
        assert driver.retained == 0  # nothing on the GPU before configure
        node.trigger_configure()
        assert node.backend == "tensorrt" and driver.retained == 1 and calls.count("build") == 1
        node.trigger_activate()
        first = node.process_image(face_image(1, 64, 64))
        node.trigger_deactivate()
        assert driver.retained == 0 and not driver.device_mem and not driver.streams
        node.trigger_activate()
        assert driver.retained == 1 and calls.count("build") == 1 and node.backend == "tensorrt"
        again = node.process_image(face_image(1, 64, 64))
        np.testing.assert_allclose(again.faces[0].scores, first.faces[0].scores, atol=1e-3)
        node.trigger_deactivate()
        node.trigger_cleanup()
        assert driver.retained == 0 and node.pipeline is None
    finally:
        node.destroy_node()


@pytest.mark.slow
def test_4k_frames_across_processes_are_lost_unless_the_camera_downscales(ros, tmp_path):
    """Issue 14: over best-effort QoS most 4K images never arrive; expression_node's diagnostics
    count what DDS reports lost, and camera_node's default max_width gets the frames through."""
    import subprocess
    import sys

    import cv2

    from fer_ros.ros.expression_node import ExpressionNode

    ramp = np.linspace(0, 255, 3840, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "4k.jpg"), np.dstack([np.tile(ramp, (2160, 1))] * 3))
    context, executor = ros
    node = ExpressionNode(params={"detector": "whole", "backend": "onnxruntime", "flip_average": False,
                                  "image_topic": "/big/image"}, node_name="big_frames_node", context=context)
    executor.add_node(node)
    received = {}
    try:
        for max_width in (0, 1920):
            before = node.stats["received"]
            camera = subprocess.Popen(
                [sys.executable, "-m", "fer_ros.ros.camera_node", "--ros-args", "-p", f"source:={tmp_path}",
                 "-p", "rate:=10.0", "-p", f"max_width:={max_width}", "-r", "camera/image_raw:=/big/image"],
                env=dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(12)
            camera.send_signal(2)
            camera.wait(30)
            received[max_width] = node.stats["received"] - before
        values = {kv.key: kv.value for kv in node.diagnostics().values}
        print(f"4K at 10 fps for 12 s: received {received[0]} full size, {received[1920]} at 1920 px; "
              f"DDS reported {values['frames_lost_in_transport']} lost")
        assert received[1920] >= 40 and received[0] < received[1920] / 4, received
        assert int(values["frames_lost_in_transport"]) > 0
    finally:
        executor.remove_node(node)
        node.destroy_node()

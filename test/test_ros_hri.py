"""hri_bridge: fer_ros results as REP-155 (ROS4HRI) face topics, with the vendored hri_msgs."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")
pytest.importorskip("fer_ros.msg", reason="fer_ros messages not built (run `make build`)")

from fer_ros import LABELS  # noqa: E402
from fer_ros.ros.hri_bridge import CIRCUMPLEX, REP155_NAMES, valence_arousal  # noqa: E402


def test_names_are_rep155s_and_valence_arousal_follow_the_scores():
    assert sorted(REP155_NAMES.values()) == sorted(
        ["angry", "disgusted", "scared", "happy", "sad", "surprised", "neutral"])
    for i, label in enumerate(LABELS):  # a certain face sits at its label's circumplex point
        one_hot = np.eye(7)[i]
        assert valence_arousal(one_hot) == pytest.approx(CIRCUMPLEX[label])
    happy, sad = LABELS.index("happy"), LABELS.index("sad")
    mixed = np.zeros(7)
    mixed[[happy, sad]] = 0.5
    assert valence_arousal(mixed) == pytest.approx((0.05, 0.05))
    assert valence_arousal(mixed * 4) == pytest.approx((0.05, 0.05))  # normalised
    for bad in ([], [np.nan] * 7, [0] * 7, [1, 2]):
        assert valence_arousal(bad) == (0.0, 0.0)


@pytest.fixture(scope="module")
def ros():
    pytest.importorskip("hri_msgs.msg", reason="hri_msgs not installed (`make build` with $FER_SHARED/vendor)")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random.randint(101, 200))
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield context, executor
    executor.shutdown(timeout_sec=2)
    rclpy.try_shutdown(context=context)


def faces_msg(stamp, faces):
    from fer_ros.msg import FaceExpression, FaceExpressionArray

    msg = FaceExpressionArray(image_width=640, image_height=480)
    msg.header.stamp.sec = stamp
    for face_id, label in faces:
        scores = np.full(7, 0.02, dtype=np.float32)
        scores[LABELS.index(label)] = 0.88
        msg.faces.append(FaceExpression(face_id=face_id, expression=label, confidence=0.88, scores=scores))
    return msg


def wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_bridge_publishes_tracked_ids_and_per_face_expressions_and_drops_faces_that_leave(ros):
    from hri_msgs.msg import Expression, IdsList
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from fer_ros.msg import FaceExpressionArray
    from fer_ros.ros.hri_bridge import HriBridge

    context, executor = ros
    bridge = HriBridge(context=context)
    client = rclpy.create_node("hri_client", context=context)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    tracked, per_face = [], {"f3": [], "f5": []}
    client.create_subscription(IdsList, "/humans/faces/tracked", tracked.append, qos)
    for face, got in per_face.items():
        client.create_subscription(Expression, f"/humans/faces/{face}/expression", got.append, qos)
    pub = client.create_publisher(FaceExpressionArray, "/faces/expressions", qos)
    executor.add_node(bridge)
    executor.add_node(client)
    try:
        assert wait(lambda: pub.get_subscription_count() > 0)
        pub.publish(faces_msg(1, [(3, "fear"), (5, "happy")]))
        assert wait(lambda: tracked and per_face["f3"] and per_face["f5"])
        assert list(tracked[-1].ids) == ["f3", "f5"] and tracked[-1].header.stamp.sec == 1
        scared, happy = per_face["f3"][-1], per_face["f5"][-1]
        assert (scared.expression, happy.expression) == ("scared", "happy")
        assert happy.confidence == pytest.approx(0.88)
        assert happy.valence > 0.5 and scared.valence < -0.3 and scared.arousal > 0.5
        assert client.count_publishers("/humans/faces/f3/expression") == 1

        pub.publish(faces_msg(2, [(5, "sad")]))  # face 3 left
        assert wait(lambda: tracked[-1].header.stamp.sec == 2)
        assert list(tracked[-1].ids) == ["f5"] and set(bridge.faces) == {"f5"}
        assert wait(lambda: client.count_publishers("/humans/faces/f3/expression") == 0)
        assert wait(lambda: per_face["f5"][-1].expression == "sad")

        pub.publish(faces_msg(3, []))  # nobody: an empty list, no per-face publishers
        assert wait(lambda: tracked[-1].header.stamp.sec == 3)
        assert list(tracked[-1].ids) == [] and bridge.faces == {}
    finally:
        executor.remove_node(bridge)
        executor.remove_node(client)
        bridge.destroy_node()
        client.destroy_node()


@pytest.mark.parametrize("prefix", ["", "1", "f/", "face id"])
def test_an_id_prefix_that_makes_invalid_topic_names_is_refused_at_start(ros, prefix):
    from fer_ros.ros.hri_bridge import HriBridge

    context, _ = ros
    with pytest.raises(ValueError, match="id_prefix"):
        HriBridge(context=context, parameter_overrides=[rclpy.parameter.Parameter("id_prefix", value=prefix)])

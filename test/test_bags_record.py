"""`fer-ros bag record`: live topics (appearing after the recorder starts) end up in the bag
byte for byte, with the publisher's QoS kind and the receipt time as log time."""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")
pytest.importorskip("fer_ros.msg", reason="fer_ros messages not built (run `make build`)")

from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from fer_ros.bags.io import BagReader  # noqa: E402
from fer_ros.bags import messages as bags  # noqa: E402
from fer_ros.bags import record as bag_record  # noqa: E402
from fer_ros.ros.image import image_msg_to_array  # noqa: E402
from fer_ros.msg import FaceExpression, FaceExpressionArray  # noqa: E402
from fer_ros.ros.dds import large_data_env  # noqa: E402

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
large_data_env()


def test_record_live_topics(tmp_path):
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("fake_robot", context=ctx)
    stop = threading.Event()
    logs = []
    recorder = threading.Thread(target=lambda: logs.append(bag_record.record(
        tmp_path / "rec", topics=[bags.IMAGE_TOPIC, bags.EXPRESSIONS_TOPIC, "/robot/say"], stop=stop,
        log=logs.append, storage="sqlite3")))
    recorder.start()
    try:
        time.sleep(0.5)  # topics appear after the recorder started
        pub_img = node.create_publisher(Image, bags.IMAGE_TOPIC, qos_profile_sensor_data)
        pub_expr = node.create_publisher(FaceExpressionArray, bags.EXPRESSIONS_TOPIC,
                                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        pub_say = node.create_publisher(String, "/robot/say", 10)
        deadline = time.monotonic() + 10
        while not all(p.get_subscription_count() for p in (pub_img, pub_expr, pub_say)):
            assert time.monotonic() < deadline, f"recorder never subscribed: {logs}"
            time.sleep(0.05)
        time.sleep(0.3)
        rng = np.random.default_rng(3)
        sent_expr = []
        for i in range(5):
            img = Image(height=4, width=6, encoding="bgr8", step=18)
            img.data = rng.integers(0, 256, 72, dtype=np.uint8).tobytes()
            img.header.stamp.sec, img.header.frame_id = 100 + i, "cam"
            pub_img.publish(img)
            face = FaceExpression(face_id=7, expression="happy", confidence=0.75, detection_score=0.5)
            face.scores = np.full(7, 1 / 7, np.float32)
            face.box.width = 20 + i
            msg = FaceExpressionArray(image_width=6, image_height=4, faces=[face])
            msg.header.stamp.sec = 100 + i
            pub_expr.publish(msg)
            sent_expr.append(msg)
            pub_say.publish(String(data=f"hello {i}"))
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        recorder.join(timeout=10)
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert not recorder.is_alive()
    with BagReader(tmp_path / "rec") as bag:
        assert bag.storage == "sqlite3"
        assert bag.topics == {bags.IMAGE_TOPIC: bags.IMAGE_TYPE, bags.EXPRESSIONS_TOPIC: bags.EXPRESSIONS_TYPE,
                              "/robot/say": bags.STRING_TYPE}
        msgs = list(bag.messages())
    says = [m.msg.data for m in msgs if m.topic == "/robot/say"]
    assert says == [f"hello {i}" for i in range(5)]
    exprs = [m.msg for m in msgs if m.topic == bags.EXPRESSIONS_TOPIC]
    assert [e.header.stamp.sec for e in exprs] == [100, 101, 102, 103, 104]
    assert [e.faces[0].box.width for e in exprs] == [20, 21, 22, 23, 24]
    assert all(e.faces[0].expression == "happy" and e.faces[0].face_id == 7 for e in exprs)
    images = [m for m in msgs if m.topic == bags.IMAGE_TOPIC]
    assert len(images) >= 4  # best effort: a loss is allowed, reordering is not
    assert all(image_msg_to_array(m.msg).shape == (4, 6, 3) for m in images)
    now = time.time_ns()
    assert all(now - 60e9 < m.log_time <= now for m in msgs)  # receipt times
    import yaml

    meta = yaml.safe_load((tmp_path / "rec" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"][0]["reliability"]
           for t in meta["topics_with_message_count"]}
    assert qos == {bags.IMAGE_TOPIC: "best_effort", bags.EXPRESSIONS_TOPIC: "reliable", "/robot/say": "reliable"}


def test_record_cli_stops_cleanly_on_sigterm(tmp_path):
    """`kill` ends a recording like Ctrl-C: exit 0 and a bag that reads back."""
    import signal
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "fer_ros.cli", "bag", "record", "-o", str(tmp_path / "rec"),
                             "--topics", "/fer_ros_test_nobody_publishes"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "wrote" in out
    with BagReader(tmp_path / "rec") as bag:
        assert bag.topics == {}

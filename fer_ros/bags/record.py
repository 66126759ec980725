"""The rclpy side of `fer-ros bag`: recording live topics into a bag, and the ROS plumbing that
real-time replay shares with it (rclpy.init once, raw subscriptions written at receipt time)."""

from __future__ import annotations

import importlib
import sys
import threading
import time

from fer_ros.bags.io import BagWriter
from fer_ros.bags.messages import EXPRESSIONS_TOPIC, GROUND_TRUTH_TOPIC, IMAGE_TOPIC, BagError


#: What `record` takes when no topics are named: everything the fer_ros nodes publish or
#: read except the annotated image (large; add it with --topics when wanted).
DEFAULT_RECORD_TOPICS = (
    IMAGE_TOPIC, EXPRESSIONS_TOPIC, "/diagnostics", "/therapy/state", "/therapy/alert",
    "/therapy/answer", "/robot/expression", "/robot/say", GROUND_TRUTH_TOPIC,
)


# ------------------------------------------------------------------ ROS helpers


def ros_message_class(msgtype: str):
    """'pkg/msg/Name' -> the generated rclpy class (no rosidl_runtime_py needed)."""
    pkg, _, name = msgtype.replace("/msg/", "/").partition("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"message type {msgtype} is not installed in this Python environment") from None


class RosContext:
    """rclpy.init once for the command (and shutdown only if we did it)."""

    def __enter__(self):
        from fer_ros.ros.dds import large_data_env

        large_data_env()  # images > 64 kB across processes
        import rclpy

        from rclpy.signals import SignalHandlerOptions

        self.owned = not rclpy.ok()
        if self.owned:
            # our own CLI args are not ROS args; Ctrl-C stays a KeyboardInterrupt, so bags get closed
            rclpy.init(args=[sys.argv[0] if sys.argv else "fer-ros"],
                       signal_handler_options=SignalHandlerOptions.NO)
        return self

    def __exit__(self, *exc):
        import rclpy

        if self.owned and rclpy.ok():
            rclpy.shutdown()
        return False

def wait_for(condition, timeout: float, message: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise BagError(f"{message} after {timeout:g} s")
        time.sleep(0.05)


def record_subscription(node, topic: str, out: BagWriter, lock, msgtype: str | None = None):
    """Subscribe raw to `topic` and append what arrives to `out` at receipt time."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if msgtype is None:
        found = dict(node.get_topic_names_and_types()).get(topic)
        if not found:
            raise BagError(f"topic {topic} is not published (cannot tell its type)")
        msgtype = found[0]
    cls = ros_message_class(msgtype)
    infos = node.get_publishers_info_by_topic(topic)
    best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
    out.add_topic(topic, msgtype, qos="sensor_data" if best_effort else "reliable")
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                     else ReliabilityPolicy.RELIABLE)

    def callback(raw):
        t = time.time_ns()
        with lock:
            out.write(topic, t, raw)

    return node.create_subscription(cls, topic, callback, qos, raw=True)


# ------------------------------------------------------------------------ record


def record(out_path, topics=DEFAULT_RECORD_TOPICS, duration: float | None = None, storage: str = "mcap",
           overwrite: bool = False, log=print, stop: threading.Event | None = None) -> dict:
    """Record `topics` (subscribed as they appear) until `duration` s, Ctrl-C or `stop` is set."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    out = BagWriter(out_path, storage=storage, overwrite=overwrite, background=True)  # callbacks never wait on disk
    lock = threading.Lock()
    stop = stop or threading.Event()
    subscribed: dict[str, object] = {}
    start = time.monotonic()
    try:
        with RosContext():
            node = rclpy.create_node("fer_bag_record")
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            next_scan = 0.0
            try:
                while not stop.is_set() and (duration is None or time.monotonic() - start < duration):
                    if time.monotonic() >= next_scan:  # topics that appeared since the last look
                        for topic, types in node.get_topic_names_and_types():
                            if topic in topics and topic not in subscribed:
                                try:
                                    subscribed[topic] = record_subscription(node, topic, out, lock, types[0])
                                    log(f"recording {topic} [{types[0]}]")
                                except BagError as exc:
                                    log(f"warning: skipping {topic}: {exc}")
                                    subscribed[topic] = None
                        next_scan = time.monotonic() + 0.5
                    executor.spin_once(timeout_sec=0.05)
            except (KeyboardInterrupt, ExternalShutdownException):
                log("stopped")
            finally:
                executor.shutdown()
                node.destroy_node()
    finally:
        out.close()
    missing = sorted(set(topics) - set(subscribed))
    if missing:
        log("never published: " + ", ".join(missing))
    return {"bag": str(out_path), "messages": dict(out.counts), "duration_s": time.monotonic() - start}

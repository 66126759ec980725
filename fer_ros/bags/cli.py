"""`fer-ros bag`: make, record, label, replay and evaluate rosbag2 bags (see docs/bags.md).

    fer-ros bag from-video session.mp4 --labels session.csv -o session_bag
    fer-ros bag from-dataset ../shared/data/fer2013.npz --split PublicTest -o fer_test_bag
    fer-ros bag record -o live_bag                      # camera, expressions, therapy topics
    fer-ros bag label live_bag --labels live.csv -o live_labelled
    fer-ros bag replay session_bag -o session_out [--rate 1.0 | --fast] [-p detector:=whole]
    fer-ros bag evaluate session_out --report session_eval
    fer-ros bag info session_out

The ROS-free parts live in fer_ros.bags.rosbag and fer_ros.bags.evaluation; this module adds the
rclpy side (record, replay) and the command line. `replay`, `record`, `make_*` and
`evaluate_bag` are usable from Python too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from fer_ros.bags import rosbag as bags
from fer_ros.bags.rosbag import BagError

#: What `record` takes when no topics are named: everything the fer_ros nodes publish or
#: read except the annotated image (large; add it with --topics when wanted).
DEFAULT_RECORD_TOPICS = (
    bags.IMAGE_TOPIC, bags.EXPRESSIONS_TOPIC, "/diagnostics", "/therapy/state", "/therapy/alert",
    "/therapy/answer", "/robot/expression", "/robot/say", bags.GROUND_TRUTH_TOPIC,
)


# ------------------------------------------------------------------ ROS helpers


def _ros_message_class(msgtype: str):
    """'pkg/msg/Name' -> the generated rclpy class (no rosidl_runtime_py needed)."""
    pkg, _, name = msgtype.replace("/msg/", "/").partition("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"message type {msgtype} is not installed in this Python environment") from None


class _Ros:
    """rclpy.init once for the command (and shutdown only if we did it)."""

    def __enter__(self):
        os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")  # images > 64 kB across processes
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


def _parse_value(text: str):
    """`-p name:=value` values the way `ros2 run --ros-args -p` reads them (YAML scalars)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_params(items, params_file=None, node_name: str = "expression_node") -> dict:
    """Parameter overrides from a ROS 2 params YAML (its `node_name` or `/**` section) and `name:=value`."""
    import yaml

    out: dict = {}
    if params_file:
        try:
            doc = yaml.safe_load(Path(params_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BagError(f"cannot read parameters file {params_file}: {exc}") from None
        for key in ("/**", node_name, f"/{node_name}"):
            section = (doc.get(key) or {}).get("ros__parameters") or {}
            out.update(_flatten(section))
    for item in items or ():
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise BagError(f"parameter {item!r} must look like name:=value")
        out[name.strip()] = _parse_value(value)
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def make_expression_node(params: dict, subscribe: bool = True):
    """The expression node in this process with parameter overrides (the same class `ros2 run` starts).

    subscribe=False: no image subscription or worker thread; frames go in through process_sync.
    """
    from fer_ros.ros.expression_node import PARAMS, ExpressionNode

    params = _coerce_params(params, {p.name: p.default for p in PARAMS})
    try:
        return ExpressionNode(params=params, subscribe=subscribe)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # bad parameter value or model path
        raise BagError(f"cannot start the expression node with {params}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. rclpy's ParameterNotDeclared/InvalidParameterValue
        raise BagError(f"cannot start the expression node with {params}: {type(exc).__name__}: {exc}") from None


def _coerce_params(params: dict, defaults: dict) -> dict:
    """Check names against the node's declared parameters and fit the types (0 -> 0.0 for floats),
    so a typo is an error instead of a silently ignored override."""
    out = {}
    for name, value in params.items():
        if name not in defaults:
            close = [n for n in defaults if n.split(".")[-1] == name.split(".")[-1] or name in n]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise BagError(f"the expression node has no parameter {name!r}{hint}; it has: {', '.join(sorted(defaults))}")
        default = defaults[name]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise BagError(f"parameter {name} must be true or false, got {value!r}")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            value = str(value)
        elif type(value) is not type(default):
            raise BagError(f"parameter {name} must be a {type(default).__name__}, got {value!r}")
        out[name] = value
    return out


def process_sync(node, image_msg):
    """Run one sensor_msgs/Image through the node now; its FaceExpressionArray (None if malformed)."""
    return node.process_image(image_msg, publish=False)


# ------------------------------------------------------------------------ replay


def replay(bag_path, out_path, rate: float | None = 1.0, params: dict | None = None, external: bool = False,
           image_topic: str = bags.IMAGE_TOPIC, keep_images: bool = False, extra_topics=(),
           storage: str | None = None, overwrite: bool = False, max_frames: int | None = None,
           annotated: bool = False, log=print) -> dict:
    """Play a bag's images through the expression node and write its outputs to a new bag.

    rate=None: as fast as the node keeps up (the node is driven in-process, one frame at a
    time, nothing dropped). rate=r: real publish/subscribe at r times the recorded speed; the
    node drops frames it cannot keep up with, like on the robot. external=True publishes to a
    node already running (e.g. on the robot) instead of starting one here.

    Every published frame gets a fresh header stamp (publish time), so receipt - stamp is the
    end-to-end latency; ground-truth labels are moved to the new stamps. The output bag holds
    /faces/expressions (log time = receipt), /ground_truth/expression, /replay/frames and,
    with keep_images, the restamped images; with annotated, /faces/image_annotated (boxes, ids,
    labels drawn as the node draws them). Returns a summary dict.
    """
    if rate is not None and rate <= 0:
        raise BagError(f"rate must be > 0 (or use fast mode), got {rate}")
    if external and rate is None:
        raise BagError("an external node can only be replayed to in real time (give a --rate)")
    params = dict(params or {})
    with bags.BagReader(bag_path) as src:
        image_type = src.require(image_topic, bags.IMAGE_TYPES)
        has_gt = bags.GROUND_TRUTH_TOPIC in src.topics
        n_images = src.counts.get(image_topic, 0)
        if n_images == 0:
            raise BagError(f"{bag_path}: {image_topic} has no messages")
        # labels first (small), keyed by the original image stamp; images are streamed later
        labels = {m.log_time: m.msg.data for m in src.messages([bags.GROUND_TRUTH_TOPIC])} if has_gt else {}
        storage = storage or src.storage
        source_info = src.info
    from fer_ros.ros.expression_node import PARAMS

    declared = {p.name for p in PARAMS}
    for k, v in _recommended_params(source_info).items():
        if k in params:
            continue
        if k not in declared:  # a bag made for another version of the node
            log(f"warning: {bag_path} recommends {k}={v!r}, which this expression node does not have")
            continue
        params[k] = v
        log(f"using {k}={v!r} recommended by {bag_path} (override with -p {k}:=...)")
    if not has_gt:
        log(f"note: {bag_path} has no {bags.GROUND_TRUTH_TOPIC}; outputs are written, but evaluation needs labels")

    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from fer_ros.ros.image import bgr_to_image_msg

    params = _coerce_params(params, {p.name: p.default for p in PARAMS})  # before any output exists
    # frames go to the topic the node listens on (and are kept under it), whatever the bag called them
    node_topic = "/" + str(params.get("image_topic", bags.IMAGE_TOPIC)).lstrip("/")

    def decompress(raw):
        """CompressedImage (JPEG/PNG) -> bgr8 Image with the same header: what the node subscribes to."""
        import cv2
        import numpy as np
        from sensor_msgs.msg import CompressedImage

        msg = deserialize_message(raw, CompressedImage)
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f"a CompressedImage ({msg.format!r}) on {image_topic} cannot be decoded")
        return bgr_to_image_msg(bgr, header=msg.header)

    def frames():
        """(log_time, raw image) streamed from the bag: long bags never sit in memory."""
        with bags.BagReader(bag_path) as src:
            for i, m in enumerate(src.messages([image_topic], raw=True)):
                if i >= n_frames:
                    return
                yield m.log_time, m.msg

    # real time: the disk must not hold up publishing or the node's callbacks (see BagWriter)
    out = bags.BagWriter(out_path, storage=storage, overwrite=overwrite, background=rate is not None)
    lock = threading.Lock()
    n_frames = n_images if max_frames is None else min(n_images, max_frames)
    summary = {"bag": str(out_path), "source": str(bag_path), "frames_in": n_frames, "outputs": 0,
               "labelled": 0, "mode": "fast" if rate is None else f"rate {rate:g}"}
    try:
        out.add_topic(bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE)
        out.add_topic(bags.FRAMES_TOPIC, bags.HEADER_TYPE)
        if has_gt:
            out.add_topic(bags.GROUND_TRUTH_TOPIC, bags.STRING_TYPE)
        if keep_images:
            out.add_topic(node_topic, bags.IMAGE_TYPE)
        if annotated and rate is None:
            out.add_topic(bags.ANNOTATED_TOPIC, bags.IMAGE_TYPE)
        elif annotated and bags.ANNOTATED_TOPIC not in extra_topics:
            extra_topics = [*extra_topics, bags.ANNOTATED_TOPIC]  # real time: record what the node draws
        out.set_info("replay_of", str(bag_path))
        out.set_info("replay_mode", summary["mode"])
        out.set_info("node_parameters", json.dumps(params))
        if "source" in source_info:
            out.set_info("source", source_info["source"])

        def write_input(msg, t_pub, orig_stamp):
            """Frame marker, moved label and (optionally) the image, all at the new stamp."""
            header = bags.make_header(t_pub, msg.header.frame_id)
            with lock:
                out.write(bags.FRAMES_TOPIC, t_pub, header)
                label = labels.get(orig_stamp)
                if label is not None:
                    out.write(bags.GROUND_TRUTH_TOPIC, t_pub, bags.make_string(label))
                    summary["labelled"] += 1
                if keep_images:
                    out.write(node_topic, t_pub, serialize_message(msg))

        def write_output(raw: bytes, t_recv: int):
            with lock:
                out.write(bags.EXPRESSIONS_TOPIC, t_recv, raw)
                summary["outputs"] += 1

        def decode(raw, log_time):
            """(Image message, its label key), or None for a broken message."""
            try:
                msg = deserialize_message(raw, Image) if image_type == bags.IMAGE_TYPE else decompress(raw)
            except Exception as exc:  # noqa: BLE001 - one broken message must not end the replay
                summary["skipped"] = summary.get("skipped", 0) + 1
                log(f"warning: skipping an undecodable image at t={log_time} ns: {exc}")
                return None
            return msg, bags.label_key(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, log_time)

        def restamp(msg) -> int:
            """Stamp `msg` with the time now (its publish time) and return that stamp."""
            t = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t, 1_000_000_000)
            return t

        with _Ros():
            if rate is None:
                node = make_expression_node(params, subscribe=False)
                try:
                    summary["node"] = _node_description(node)
                    start = last_log = time.perf_counter()
                    for i, (log_time, raw) in enumerate(frames()):
                        if time.perf_counter() - last_log > 5.0:
                            last_log = time.perf_counter()
                            log(f"  {i}/{n_frames} frames, {i / (last_log - start):.1f} frames/s")
                        decoded = decode(raw, log_time)
                        if decoded is None:
                            continue
                        msg, orig = decoded
                        t_pub = restamp(msg)
                        result = process_sync(node, msg)
                        t_recv = time.time_ns()
                        write_input(msg, t_pub, orig)
                        if result is not None:
                            write_output(serialize_message(result), t_recv)
                            if annotated:
                                drawn = _annotate(msg, result)
                                with lock:
                                    out.write(bags.ANNOTATED_TOPIC, t_recv, serialize_message(drawn))
                    summary["wall_s"] = time.perf_counter() - start
                finally:
                    node.destroy_node()
            else:
                _replay_realtime(frames(), rate, params, external, node_topic, extra_topics, out, lock,
                                 decode, restamp, write_input, write_output, summary, log)
    except BaseException:
        out.close()
        if not any(out.counts.values()):  # failed before anything was written: leave no empty bag
            import shutil

            shutil.rmtree(out.path, ignore_errors=True)
        raise
    finally:
        out.close()
    # frames/s only means something when the node set the pace (fast mode)
    summary["fps"] = summary["outputs"] / summary["wall_s"] if rate is None and summary.get("wall_s") else None
    return summary


def _annotate(image_msg, result_msg):
    """The node's annotated image for one output, drawn here (fast mode has no annotated topic)."""
    from fer_ros.perception.annotate import draw_results
    from fer_ros.perception.pipeline import FaceResult
    from fer_ros.ros.image import bgr_to_image_msg, image_msg_to_bgr

    results = [FaceResult(int(f.face_id), (f.box.x_offset, f.box.y_offset, f.box.width, f.box.height),
                          f.expression, float(f.confidence), f.scores, float(f.detection_score))
               for f in result_msg.faces]
    return bgr_to_image_msg(draw_results(image_msg_to_bgr(image_msg), results), header=image_msg.header)


def _recommended_params(info: dict) -> dict:
    """Node parameters a bag asks for (from-dataset bags: whole-image detector, no smoothing)."""

    try:
        return dict(json.loads(info.get("replay_params", "{}")))
    except (ValueError, TypeError):
        return {}


def _node_description(node) -> dict:
    """Model and backend of the in-process node, for the report (best effort: attributes may differ)."""
    return {"backend": str(getattr(node, "backend", "unknown")), "model": str(getattr(node, "model_path", "unknown"))}


def _replay_realtime(frames, rate, params, external, image_topic, extra_topics, out, lock, decode, restamp,
                     write_input, write_output, summary, log):
    """Publish frames on their recorded schedule / rate; record what the node publishes."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from fer_ros.msg import FaceExpressionArray

    player = rclpy.create_node("fer_bag_replay")
    nodes = [player]
    if not external:
        node = make_expression_node(params)
        nodes.append(node)
        summary["node"] = _node_description(node)
    # One thread is enough: the node's callbacks only hand frames to its worker and the player's
    # only queue writes. rclpy's MultiThreadedExecutor busy-polls while a callback runs, holding
    # the GIL so long that publishing fell up to 3 s behind schedule on a 2-core machine.
    executor = SingleThreadedExecutor()
    for n in nodes:
        executor.add_node(n)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    last_output = [time.monotonic()]
    try:
        # reliable keep-last-1 matches reliable and best-effort subscribers and never queues old frames
        pub = player.create_publisher(Image, image_topic,
                                      QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                                                 reliability=ReliabilityPolicy.RELIABLE))
        _wait(lambda: pub.get_subscription_count() > 0, 10.0,
              f"no expression node subscribes to {image_topic}" + (" (is it running?)" if external else ""))
        _wait(lambda: player.get_publishers_info_by_topic(bags.EXPRESSIONS_TOPIC), 10.0,
              f"nobody publishes {bags.EXPRESSIONS_TOPIC}")
        # match the node's reliability: a reliable subscription would not hear a best-effort publisher
        infos = player.get_publishers_info_by_topic(bags.EXPRESSIONS_TOPIC)
        best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
        sub_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                             else ReliabilityPolicy.RELIABLE)

        def on_output(raw):
            write_output(raw, time.time_ns())
            last_output[0] = time.monotonic()

        subs = [player.create_subscription(FaceExpressionArray, bags.EXPRESSIONS_TOPIC, on_output, sub_qos,
                                           raw=True)]
        for topic in extra_topics:
            subs.append(_record_subscription(player, topic, out, lock))
        time.sleep(0.3)  # let the new subscriptions match before the first frame
        start = time.perf_counter()
        t0_bag = None
        lags = []
        for log_time, raw in frames:
            decoded = decode(raw, log_time)  # before the wait: decoding must not delay the frame
            if decoded is None:
                continue
            msg, orig = decoded
            if t0_bag is None:  # the schedule starts when the first frame is ready
                t0_bag, start = log_time, time.perf_counter()
            due = start + publish_offset(log_time, t0_bag, rate)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t_pub = restamp(msg)
            write_input(msg, t_pub, orig)
            pub.publish(msg)
            lags.append(time.perf_counter() - due)
        summary.update(_lag_summary(lags))
        if summary["late_frames"]:
            log(f"warning: {summary['late_frames']} of {len(lags)} frames were published more than "
                f"{LATE_S * 1e3:.0f} ms behind the x{rate:g} schedule (up to {summary['max_lag_s']:.2f} s): "
                "this machine could not keep up; try a lower --rate")
        # wait for the last outputs: until 1 s passes without one (3 s at most)
        end = time.monotonic()
        while time.monotonic() - end < 3.0 and time.monotonic() - max(last_output[0], end) < 1.0:
            time.sleep(0.05)
        summary["wall_s"] = time.perf_counter() - start
    finally:
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        spinner.join(timeout=2.0)


LATE_S = 0.05  # a frame published this long after its due time counts as late


def publish_offset(log_time: int, t0_bag: int, rate: float) -> float:
    """Seconds after the first frame at which a frame recorded at log_time (ns) is due at x`rate`."""
    return (log_time - t0_bag) / 1e9 / rate


def _lag_summary(lags: list[float]) -> dict:
    """How far publishing fell behind the schedule: the replay sleeps until each frame is due,
    so a lag only comes from a machine too busy to publish on time (it is never early)."""
    if not lags:
        return {"late_frames": 0, "max_lag_s": 0.0, "median_lag_s": 0.0}
    ordered = sorted(lags)
    return {"late_frames": sum(lag > LATE_S for lag in lags), "max_lag_s": ordered[-1],
            "median_lag_s": ordered[len(ordered) // 2]}


def _wait(condition, timeout: float, message: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise BagError(f"{message} after {timeout:g} s")
        time.sleep(0.05)


def _record_subscription(node, topic: str, out: bags.BagWriter, lock, msgtype: str | None = None):
    """Subscribe raw to `topic` and append what arrives to `out` at receipt time."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if msgtype is None:
        found = dict(node.get_topic_names_and_types()).get(topic)
        if not found:
            raise BagError(f"topic {topic} is not published (cannot tell its type)")
        msgtype = found[0]
    cls = _ros_message_class(msgtype)
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

    out = bags.BagWriter(out_path, storage=storage, overwrite=overwrite, background=True)  # callbacks never wait on disk
    lock = threading.Lock()
    stop = stop or threading.Event()
    subscribed: dict[str, object] = {}
    start = time.monotonic()
    try:
        with _Ros():
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
                                    subscribed[topic] = _record_subscription(node, topic, out, lock, types[0])
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


# --------------------------------------------------------------------------- CLI


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, not {text!r}") from None


def _rate(text: str):
    if text.lower() in ("fast", "max", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number or 'fast', not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be > 0 (or 'fast')")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bag_command", metavar="ACTION", required=True)

    def common(p, default_storage: str | None = "mcap"):
        p.add_argument("--storage", choices=bags.STORAGES, default=default_storage,
                       help="rosbag2 storage (default: %(default)s)" if default_storage
                       else "rosbag2 storage (default: that of the input bag)")
        p.add_argument("--overwrite", action="store_true", help="replace the output bag if it exists")

    p = sub.add_parser("from-video", help="bag of images from a video file, with optional labels")
    p.add_argument("video", type=Path)
    p.add_argument("-o", "--output", type=Path, help="output bag folder (default: <video name>_bag)")
    p.add_argument("--labels", type=Path, help="CSV: rows start_s,end_s,label (seconds from the first frame, "
                   "end exclusive) or frame,label (0-based); labels by name or index")
    p.add_argument("--fps", type=float, help="frame rate of the stamps (default: the video's)")
    p.add_argument("--size", type=_size, help="letterbox frames to WxH, e.g. 640x480 (keeps face shapes)")
    p.add_argument("--loops", type=int, default=1, help="play the video N times in a row")
    p.add_argument("--max-frames", type=int)
    p.add_argument("--frame-id", default="camera")
    common(p)

    p = sub.add_parser("from-dataset", help="bag of FER-2013 images with one label each")
    p.add_argument("npz", type=Path, help="FER-2013 npz (shared/data/fer2013.npz)")
    p.add_argument("-o", "--output", type=Path, help="output bag folder (default: fer2013_<split>_bag)")
    p.add_argument("--split", default="PublicTest")
    p.add_argument("--fps", type=float, default=30.0, help="image rate (default: %(default)s)")
    p.add_argument("--encoding", choices=("mono8", "bgr8"), default="mono8")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--frame-id", default="camera")
    common(p)

    p = sub.add_parser("record", help="record live topics into a bag")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--topics", nargs="+", default=list(DEFAULT_RECORD_TOPICS),
                   help="topics to record (default: camera, expressions, diagnostics, therapy and robot topics)")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    common(p)

    p = sub.add_parser("label", help="copy a recorded bag adding ground-truth labels from a CSV")
    p.add_argument("bag", type=Path)
    p.add_argument("--labels", type=Path, required=True, help="CSV as for from-video; times are seconds "
                   "from the first image's stamp, frames count images")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--image-topic", default=bags.IMAGE_TOPIC)
    common(p, None)

    p = sub.add_parser("replay", help="run a bag's images through the expression node, write its outputs")
    p.add_argument("bag", type=Path)
    p.add_argument("-o", "--output", type=Path, help="output bag folder (default: <bag>_replay)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=_rate, default=1.0,
                       help="factor of the recorded speed, or 'fast' (default: %(default)s)")
    speed.add_argument("--fast", action="store_true",
                       help="as fast as the node keeps up (in-process, every frame processed)")
    p.add_argument("--detector", help="shorthand for -p detector:=NAME (e.g. 'whole' for pre-cropped faces)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="expression node parameter override (repeatable)")
    p.add_argument("--params-file", type=Path, help="ROS 2 parameters YAML (expression_node section)")
    p.add_argument("--external", action="store_true",
                   help="publish to an expression node that is already running instead of starting one")
    p.add_argument("--image-topic", default=bags.IMAGE_TOPIC,
                   help="image topic in the bag (published to the node's image_topic, default %(default)s)")
    p.add_argument("--keep-images", action="store_true", help="also write the restamped images")
    p.add_argument("--annotated", action="store_true",
                   help="also write /faces/image_annotated (boxes, ids, expressions drawn on the frames)")
    p.add_argument("--record", action="append", default=[], metavar="TOPIC",
                   help="real-time mode: also record this topic, e.g. /faces/image_annotated (repeatable)")
    p.add_argument("--max-frames", type=int)
    p.add_argument("--evaluate", type=Path, metavar="DIR", help="then evaluate and write the report to DIR")
    common(p, None)

    p = sub.add_parser("evaluate", help="score /faces/expressions against the ground-truth labels")
    p.add_argument("bag", type=Path)
    p.add_argument("--report", type=Path, help="folder for evaluation.json/.md and confusion_matrix.png "
                   "(default: <bag>_eval)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the markdown summary")
    p.add_argument("--no-labels", action="store_true",
                   help="bag without ground truth (e.g. a live recording): rate, faces found and latency only")

    p = sub.add_parser("info", help="topics, counts and provenance of a bag")
    p.add_argument("bag", type=Path)


def _print_evaluation(bag_path, report_dir, as_json: bool = False, labels: bool = True) -> dict:
    from fer_ros.bags import evaluation

    result = evaluation.evaluate_bag(bag_path) if labels else evaluation.evaluate_bag_outputs(bag_path)
    paths = evaluation.write_report(result, report_dir)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(evaluation.markdown(result), end="")
        print("\nreport: " + "  ".join(paths.values()))
    return result


def run(args) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        out = getattr(args, "output", None)
        print(f"fer-ros bag {args.bag_command}: interrupted" + (f"; what was written is in {out}" if out else ""),
              file=sys.stderr)
        return 130
    except BagError as exc:
        print(f"fer-ros bag {args.bag_command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fer-ros bag {args.bag_command}: error: {exc}", file=sys.stderr)
        return 1


def _stop_on_sigterm() -> None:
    """`kill` (SIGTERM) ends record/replay like Ctrl-C: the bag is closed and stays readable."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _run(args) -> int:
    cmd = args.bag_command
    if cmd in ("record", "replay"):
        _stop_on_sigterm()
    if cmd == "from-video":
        out = args.output or Path(f"{args.video.stem}_bag")
        s = bags.video_to_bag(args.video, out, labels=args.labels, fps=args.fps, size=args.size, loops=args.loops,
                              max_frames=args.max_frames, storage=args.storage, frame_id=args.frame_id,
                              overwrite=args.overwrite)
        print(f"wrote {s['bag']}: {s['frames']} frames at {s['fps']:g} fps, {s['labelled']} labelled")
    elif cmd == "from-dataset":
        out = args.output or Path(f"fer2013_{args.split}_bag")
        s = bags.dataset_to_bag(args.npz, out, split=args.split, fps=args.fps, encoding=args.encoding,
                                limit=args.limit, storage=args.storage, frame_id=args.frame_id,
                                overwrite=args.overwrite)
        print(f"wrote {s['bag']}: {s['frames']} {args.encoding} images at {s['fps']:g} fps, one label each\n"
              f"replay with: fer-ros bag replay {s['bag']} --fast (the bag asks for the whole-image detector)")
    elif cmd == "record":
        s = record(args.output, topics=args.topics, duration=args.duration, storage=args.storage,
                   overwrite=args.overwrite)
        print(f"wrote {s['bag']}: " + (", ".join(f"{t} {n}" for t, n in s["messages"].items()) or "no messages"))
    elif cmd == "label":
        s = bags.label_bag(args.bag, args.output, args.labels, topic=args.image_topic, storage=args.storage,
                           overwrite=args.overwrite)
        broken = f" ({s['skipped']} undecodable images skipped)" if s["skipped"] else ""
        print(f"wrote {s['bag']}: {s['labelled']} of {s['frames']} images labelled{broken}")
    elif cmd == "replay":
        params = parse_params(args.param, args.params_file)
        if args.detector:
            params["detector"] = args.detector
        rate = None if args.fast else args.rate
        out = args.output or Path(f"{str(args.bag).rstrip('/')}_replay")
        s = replay(args.bag, out, rate=rate, params=params, external=args.external, image_topic=args.image_topic,
                   keep_images=args.keep_images, extra_topics=args.record, storage=args.storage,
                   overwrite=args.overwrite, max_frames=args.max_frames, annotated=args.annotated)
        fps = f", {s['fps']:.1f} frames/s" if s.get("fps") else ""
        print(f"wrote {s['bag']}: {s['outputs']} outputs for {s['frames_in']} frames ({s['mode']}{fps}), "
              f"{s['labelled']} labels")
        if args.evaluate:
            _print_evaluation(out, args.evaluate, labels=s["labelled"] > 0)
    elif cmd == "evaluate":
        report = args.report or Path(f"{str(args.bag).rstrip('/')}_eval")
        _print_evaluation(args.bag, report, args.json, labels=not args.no_labels)
    elif cmd == "info":
        with bags.BagReader(args.bag) as bag:
            span = (bag.end_time - bag.start_time) / 1e9 if bag.counts else 0.0
            print(f"{args.bag}: {bag.storage}, {sum(bag.counts.values())} messages over {span:.2f} s")
            print(bag.describe())
            for k, v in bag.info.items():
                print(f"  {k}: {v}")
    return 0

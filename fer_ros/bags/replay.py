"""`fer-ros bag replay`: a bag's images through the expression pipeline, its outputs into a new bag.

Fast mode calls the pipeline and the message conversion of the expression node directly
(`build_pipeline`, `results_to_msg`), one frame at a time with nothing dropped; real-time mode
publishes on the recorded schedule to an expression node (started here, or already running) and
records what it publishes, so frames it cannot keep up with are dropped as on the robot.
"""

from __future__ import annotations

import json
import threading
import time

from fer_ros.bags.io import BagReader, BagWriter
from fer_ros.perception.settings import BY_NAME, fit_value
from fer_ros.bags.messages import (ANNOTATED_TOPIC, EXPRESSIONS_TOPIC, EXPRESSIONS_TYPE, FRAMES_TOPIC,
                                   GROUND_TRUTH_TOPIC, HEADER_TYPE, IMAGE_TOPIC, IMAGE_TYPE, IMAGE_TYPES,
                                   STRING_TYPE, BagError, label_key, make_header, make_string, set_stamp,
                                   stamp_to_ns)

LATE_S = 0.05  # a frame published this long after its due time counts as late


# ------------------------------------------------------------------ parameters


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

    from fer_ros.ros.node_set import load_config

    out: dict = {}
    if params_file:
        try:
            sections = load_config(params_file)
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise BagError(f"cannot read parameters file {params_file}: {exc}") from None
        for key in ("**", node_name):  # load_config drops the leading '/'
            out.update(sections.get(key, {}))
    for item in items or ():
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise BagError(f"parameter {item!r} must look like name:=value")
        out[name.strip()] = _parse_value(value)
    return out


def coerce_params(params: dict) -> dict:
    """Check names against the expression node's declared parameters, fit the types (0 -> 0.0 for
    floats) and check the declared ranges, so a typo or a bad value is an error before anything runs."""
    from fer_ros.ros.expression_node import PARAMS

    declared = {p.name: p for p in PARAMS}
    out = {}
    for name, value in params.items():
        if name not in declared:
            close = [n for n in declared if n.split(".")[-1] == name.split(".")[-1] or name in n]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise BagError(f"the expression node has no parameter {name!r}{hint}; it has: {', '.join(sorted(declared))}")
        default = declared[name].default
        if isinstance(default, str) and not isinstance(value, str):
            value = str(value)  # `-p model_path:=123` arrives as a number
        choices = BY_NAME[name].choices if name in BY_NAME else None  # pipeline settings: detector, backend
        try:
            value = fit_value(name, value, default, declared[name].range, choices)
        except ValueError as exc:
            raise BagError(f"parameter {exc}") from None
        out[name] = value
    return out


def recommended_params(info: dict) -> dict:
    """Node parameters a bag asks for (from-dataset bags: whole-image detector, no smoothing)."""
    try:
        return dict(json.loads(info.get("replay_params", "{}")))
    except (ValueError, TypeError):
        return {}


def make_expression_node(params: dict, subscribe: bool = True):
    """The expression node in this process with parameter overrides (the same class `ros2 run` starts)."""
    from fer_ros.ros.expression_node import ExpressionNode

    try:
        return ExpressionNode(params=coerce_params(params), subscribe=subscribe)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # bad parameter value or model path
        raise BagError(f"cannot start the expression node with {params}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. rclpy's ParameterNotDeclared/InvalidParameterValue
        raise BagError(f"cannot start the expression node with {params}: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------ schedule


def publish_offset(log_time: int, t0_bag: int, rate: float) -> float:
    """Seconds after the first frame at which a frame recorded at log_time (ns) is due at x`rate`."""
    return (log_time - t0_bag) / 1e9 / rate


def lag_summary(lags: list[float]) -> dict:
    """How far publishing fell behind the schedule: the replay sleeps until each frame is due,
    so a lag only comes from a machine too busy to publish on time (it is never early)."""
    if not lags:
        return {"late_frames": 0, "max_lag_s": 0.0, "median_lag_s": 0.0}
    ordered = sorted(lags)
    return {"late_frames": sum(lag > LATE_S for lag in lags), "max_lag_s": ordered[-1],
            "median_lag_s": ordered[len(ordered) // 2]}


# ------------------------------------------------------------------ the replay


class Replay:
    """One replay of `bag_path` into `out_path`; owns the output writer, the ground-truth labels
    (moved to the new stamps) and the summary. See `replay` for the arguments."""

    def __init__(self, bag_path, out_path, rate: float | None = 1.0, params: dict | None = None,
                 external: bool = False, image_topic: str = IMAGE_TOPIC, keep_images: bool = False,
                 extra_topics=(), storage: str | None = None, overwrite: bool = False,
                 max_frames: int | None = None, annotated: bool = False, log=print):
        if rate is not None and rate <= 0:
            raise BagError(f"rate must be > 0 (or use fast mode), got {rate}")
        if external and rate is None:
            raise BagError("an external node can only be replayed to in real time (give a --rate)")
        self.bag_path, self.out_path, self.rate, self.external = bag_path, out_path, rate, external
        self.image_topic, self.keep_images, self.annotated, self.log = image_topic, keep_images, annotated, log
        self.extra_topics, self.overwrite = list(extra_topics), overwrite
        with BagReader(bag_path) as src:
            self.image_type = src.require(image_topic, IMAGE_TYPES)
            self.has_gt = GROUND_TRUTH_TOPIC in src.topics
            n_images = src.counts.get(image_topic, 0)
            if n_images == 0:
                raise BagError(f"{bag_path}: {image_topic} has no messages")
            # labels first (small), keyed by the original image stamp; images are streamed later
            self.labels = {m.log_time: m.msg.data for m in src.messages([GROUND_TRUTH_TOPIC])} if self.has_gt else {}
            self.storage = storage or src.storage
            self.source_info = src.info
        self.params = coerce_params(self._with_recommended(dict(params or {})))  # before any output exists
        # frames go to the topic the node listens on (and are kept under it), whatever the bag called them
        self.node_topic = "/" + str(self.params.get("image_topic", IMAGE_TOPIC)).lstrip("/")
        self.n_frames = n_images if max_frames is None else min(n_images, max_frames)
        self.summary = {"bag": str(out_path), "source": str(bag_path), "frames_in": self.n_frames, "outputs": 0,
                        "labelled": 0, "mode": "fast" if rate is None else f"rate {rate:g}"}
        self.out: BagWriter | None = None
        self.lock = threading.Lock()  # real time: the node's and the player's callbacks both write

    def _with_recommended(self, params: dict) -> dict:
        from fer_ros.ros.expression_node import PARAMS

        declared = {p.name for p in PARAMS}
        for k, v in recommended_params(self.source_info).items():
            if k in params:
                continue
            if k not in declared:  # a bag made for another version of the node
                self.log(f"warning: {self.bag_path} recommends {k}={v!r}, which this expression node does not have")
                continue
            params[k] = v
            self.log(f"using {k}={v!r} recommended by {self.bag_path} (override with -p {k}:=...)")
        if not self.has_gt:
            self.log(f"note: {self.bag_path} has no {GROUND_TRUTH_TOPIC}; outputs are written, "
                     "but evaluation needs labels")
        return params

    # -- running ---------------------------------------------------------------------------
    def run(self) -> dict:
        pipeline = self._build_pipeline() if self.rate is None else None
        # real time: the disk must not hold up publishing or the node's callbacks (see BagWriter)
        self.out = BagWriter(self.out_path, storage=self.storage, overwrite=self.overwrite,
                             background=self.rate is not None)
        try:
            self._open_output()
            if pipeline is not None:
                self._run_fast(pipeline)
            else:
                self._run_realtime()
        except BaseException:
            self.out.close()
            if not any(self.out.counts.values()):  # failed before anything was written: leave no empty bag
                import shutil

                shutil.rmtree(self.out.path, ignore_errors=True)
            raise
        finally:
            self.out.close()
            if pipeline is not None:
                pipeline.close()
        s = self.summary  # frames/s only means something when the pipeline set the pace (fast mode)
        s["fps"] = s["outputs"] / s["wall_s"] if self.rate is None and s.get("wall_s") else None
        return s

    def _build_pipeline(self):
        from fer_ros.perception.settings import build_pipeline

        try:  # the node's other parameters (topics, QoS) do not apply here and are ignored
            pipeline = build_pipeline(self.params)
        except (ValueError, FileNotFoundError, ImportError) as exc:  # bad parameter value or model path
            raise BagError(f"cannot start the expression pipeline with {self.params}: {exc}") from None
        self.summary["node"] = {"backend": str(pipeline.classifier.backend),
                                "model": str(pipeline.classifier.model_path)}
        return pipeline

    def _open_output(self) -> None:
        out = self.out
        out.add_topic(EXPRESSIONS_TOPIC, EXPRESSIONS_TYPE)
        out.add_topic(FRAMES_TOPIC, HEADER_TYPE)
        if self.has_gt:
            out.add_topic(GROUND_TRUTH_TOPIC, STRING_TYPE)
        if self.keep_images:
            out.add_topic(self.node_topic, IMAGE_TYPE)
        if self.annotated and self.rate is None:
            out.add_topic(ANNOTATED_TOPIC, IMAGE_TYPE)
        elif self.annotated and ANNOTATED_TOPIC not in self.extra_topics:
            self.extra_topics.append(ANNOTATED_TOPIC)  # real time: record what the node draws
        out.set_info("replay_of", str(self.bag_path))
        out.set_info("replay_mode", self.summary["mode"])
        out.set_info("node_parameters", json.dumps(self.params))
        if "source" in self.source_info:
            out.set_info("source", self.source_info["source"])

    def frames(self):
        """(log_time, raw image) streamed from the bag: long bags never sit in memory."""
        with BagReader(self.bag_path) as src:
            for i, m in enumerate(src.messages([self.image_topic], raw=True)):
                if i >= self.n_frames:
                    return
                yield m.log_time, m.msg

    def decode(self, raw, log_time):
        """(Image message, its label key), or None for a broken message (logged, counted)."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        try:
            msg = deserialize_message(raw, Image) if self.image_type == IMAGE_TYPE else self._decompress(raw)
        except Exception as exc:  # noqa: BLE001 - one broken message must not end the replay
            self.summary["skipped"] = self.summary.get("skipped", 0) + 1
            self.log(f"warning: skipping an undecodable image at t={log_time} ns: {exc}")
            return None
        return msg, label_key(stamp_to_ns(msg.header.stamp), log_time)

    def _decompress(self, raw):
        """CompressedImage (JPEG/PNG) -> bgr8 Image with the same header: what the node subscribes to."""
        import cv2
        import numpy as np
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CompressedImage

        from fer_ros.ros.image import bgr_to_image_msg

        msg = deserialize_message(raw, CompressedImage)
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagError(f"a CompressedImage ({msg.format!r}) on {self.image_topic} cannot be decoded")
        return bgr_to_image_msg(bgr, header=msg.header)

    @staticmethod
    def restamp(msg) -> int:
        """Stamp `msg` with the time now (its publish time) and return that stamp."""
        t = time.time_ns()
        set_stamp(msg.header.stamp, t)
        return t

    def write_input(self, msg, t_pub: int, orig_stamp: int) -> None:
        """Frame marker, moved label and (optionally) the image, all at the new stamp."""
        from rclpy.serialization import serialize_message

        with self.lock:
            self.out.write(FRAMES_TOPIC, t_pub, make_header(t_pub, msg.header.frame_id))
            label = self.labels.get(orig_stamp)
            if label is not None:
                self.out.write(GROUND_TRUTH_TOPIC, t_pub, make_string(label))
                self.summary["labelled"] += 1
            if self.keep_images:
                self.out.write(self.node_topic, t_pub, serialize_message(msg))

    def write_output(self, raw: bytes, t_recv: int) -> None:
        with self.lock:
            self.out.write(EXPRESSIONS_TOPIC, t_recv, raw)
            self.summary["outputs"] += 1

    def _run_fast(self, pipeline) -> None:
        """Every frame through the pipeline in this thread, converted as the node converts it."""
        from rclpy.serialization import serialize_message

        from fer_ros.perception.annotate import draw_results
        from fer_ros.perception.pipeline import stamp_seconds
        from fer_ros.ros.expression_node import results_to_msg
        from fer_ros.ros.image import bgr_to_image_msg, image_msg_to_bgr

        start = last_log = time.perf_counter()
        for i, (log_time, raw) in enumerate(self.frames()):
            if time.perf_counter() - last_log > 5.0:
                last_log = time.perf_counter()
                self.log(f"  {i}/{self.n_frames} frames, {i / (last_log - start):.1f} frames/s")
            decoded = self.decode(raw, log_time)
            if decoded is None:
                continue
            msg, orig = decoded
            t_pub = self.restamp(msg)
            try:
                bgr = image_msg_to_bgr(msg)
            except ValueError as exc:  # the node skips it too: no output for this frame
                self.write_input(msg, t_pub, orig)
                self.summary["malformed"] = self.summary.get("malformed", 0) + 1
                self.log(f"warning: skipping a malformed image at t={log_time} ns: {exc}")
                continue
            results = pipeline.process(bgr, stamp=stamp_seconds(msg.header.stamp))
            result = results_to_msg(results, msg.header, bgr.shape[1], bgr.shape[0])
            t_recv = time.time_ns()
            self.write_input(msg, t_pub, orig)
            self.write_output(serialize_message(result), t_recv)
            if self.annotated:
                drawn = bgr_to_image_msg(draw_results(bgr, results), header=msg.header)
                self.out.write(ANNOTATED_TOPIC, t_recv, serialize_message(drawn))
        self.summary["wall_s"] = time.perf_counter() - start

    def _run_realtime(self) -> None:
        """Publish frames on their recorded schedule / rate; record what the node publishes."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from fer_ros.bags.record import RosContext, record_subscription, wait_for
        from fer_ros.msg import FaceExpressionArray

        with RosContext():
            player = rclpy.create_node("fer_bag_replay")
            nodes = [player]
            if not self.external:
                node = make_expression_node(self.params)
                nodes.append(node)
                self.summary["node"] = {"backend": str(getattr(node, "backend", "unknown")),
                                        "model": str(getattr(node, "model_path", "unknown"))}
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
                # reliable keep-last-1 matches reliable and best-effort subscribers, never queues old frames
                pub = player.create_publisher(Image, self.node_topic,
                                              QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                                                         reliability=ReliabilityPolicy.RELIABLE))
                wait_for(lambda: pub.get_subscription_count() > 0, 10.0,
                         f"no expression node subscribes to {self.node_topic}"
                         + (" (is it running?)" if self.external else ""))
                wait_for(lambda: player.get_publishers_info_by_topic(EXPRESSIONS_TOPIC), 10.0,
                         f"nobody publishes {EXPRESSIONS_TOPIC}")
                # match the node's reliability: a reliable subscription would not hear a best-effort publisher
                infos = player.get_publishers_info_by_topic(EXPRESSIONS_TOPIC)
                best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
                sub_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                                     else ReliabilityPolicy.RELIABLE)

                def on_output(raw):
                    self.write_output(raw, time.time_ns())
                    last_output[0] = time.monotonic()

                subs = [player.create_subscription(FaceExpressionArray, EXPRESSIONS_TOPIC, on_output, sub_qos,
                                                   raw=True)]
                for topic in self.extra_topics:
                    subs.append(record_subscription(player, topic, self.out, self.lock))
                time.sleep(0.3)  # let the new subscriptions match before the first frame
                start = self._publish_on_schedule(pub)
                # wait for the last outputs: until 1 s passes without one (3 s at most)
                end = time.monotonic()
                while time.monotonic() - end < 3.0 and time.monotonic() - max(last_output[0], end) < 1.0:
                    time.sleep(0.05)
                self.summary["wall_s"] = time.perf_counter() - start
            finally:
                executor.shutdown()
                for n in nodes:
                    n.destroy_node()
                spinner.join(timeout=2.0)

    def _publish_on_schedule(self, pub) -> float:
        """Publish every frame when it is due at x`rate`; the schedule's start (perf_counter)."""
        start = time.perf_counter()
        t0_bag = None
        lags = []
        for log_time, raw in self.frames():
            decoded = self.decode(raw, log_time)  # before the wait: decoding must not delay the frame
            if decoded is None:
                continue
            msg, orig = decoded
            if t0_bag is None:  # the schedule starts when the first frame is ready
                t0_bag, start = log_time, time.perf_counter()
            due = start + publish_offset(log_time, t0_bag, self.rate)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t_pub = self.restamp(msg)
            self.write_input(msg, t_pub, orig)
            pub.publish(msg)
            lags.append(time.perf_counter() - due)
        self.summary.update(lag_summary(lags))
        if self.summary["late_frames"]:
            self.log(f"warning: {self.summary['late_frames']} of {len(lags)} frames were published more than "
                     f"{LATE_S * 1e3:.0f} ms behind the x{self.rate:g} schedule (up to "
                     f"{self.summary['max_lag_s']:.2f} s): this machine could not keep up; try a lower --rate")
        return start


def replay(bag_path, out_path, rate: float | None = 1.0, params: dict | None = None, **kw) -> dict:
    """Play a bag's images through the expression node and write its outputs to a new bag.

    rate=None: as fast as the pipeline keeps up (in-process, one frame at a time, nothing
    dropped). rate=r: real publish/subscribe at r times the recorded speed; the node drops frames
    it cannot keep up with, like on the robot. external=True publishes to a node already running
    (e.g. on the robot) instead of starting one here.

    Every published frame gets a fresh header stamp (publish time), so receipt - stamp is the
    end-to-end latency; ground-truth labels are moved to the new stamps. The output bag holds
    /faces/expressions (log time = receipt), /ground_truth/expression, /replay/frames and,
    with keep_images, the restamped images; with annotated, /faces/image_annotated (boxes, ids,
    labels drawn as the node draws them). Other keywords: image_topic, extra_topics (real time:
    also record these), storage, overwrite, max_frames, log. Returns a summary dict.
    """
    return Replay(bag_path, out_path, rate=rate, params=params, **kw).run()

"""expression_node: camera images in, facial expressions of every face out.

Subscribes to sensor_msgs/Image (`image_topic`, best-effort depth 1) and runs
fer_ros.perception.pipeline.ExpressionPipeline (detect -> crop -> classify all faces in one batch ->
track) on the newest frame only: the subscription callback just replaces the pending
frame (counting the one it drops) and a worker thread processes whatever is newest, so
results never lag behind the camera. Publishes, for every processed frame:

- `faces/expressions` fer_ros/FaceExpressionArray, header copied from the image (empty
  `faces` when nobody is in view, so consumers know the node is alive);
- `faces/image_annotated` sensor_msgs/Image with boxes, ids and labels (when enabled and
  somebody subscribes);
- `/diagnostics` diagnostic_msgs/DiagnosticArray once a second: lifecycle state, rates, latency,
  dropped, malformed, lost-in-transport and large frames, backend, model.

A lifecycle node (`ros2 lifecycle set /expression_node deactivate`): only while active does it
subscribe and publish. Malformed images are logged (throttled) and skipped; the node keeps running.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, RegionOfInterest

from fer_ros.perception.pipeline import stamp_seconds
from fer_ros.perception.settings import SETTINGS, build_pipeline
from .dds import QuietReader
from .image import image_msg_to_bgr, bgr_to_image_msg
from .params import (AutostartLifecycleNode, Param, declare_params, key_values, publish_diagnostics_every,
                     qos_from_params, qos_params, recent_rate, run_node, stop_logger)

PARAMS = [
    Param("image_topic", "camera/image_raw", "Image topic to read (sensor_msgs/Image; bgr8, rgb8, mono8, "
          "bgra8/rgba8, mono16, yuv422 are accepted).", read_only=True),
    *(Param(s.name, s.default, s.description, s.range, read_only=True) for s in SETTINGS),
    Param("autostart", True, "Configure and activate the lifecycle node at start (ros2 run, fer-ros launch); "
          "false: wait for lifecycle transitions (`ros2 launch` sends them, or `ros2 lifecycle set`).",
          read_only=True),
    Param("large_frame_pixels", 1920 * 1080, "Images with more pixels are counted as large in the "
          "diagnostics (over best-effort QoS most of them are lost on the way: downscale at the camera, "
          "camera_node max_width). 0: never.", range=(0, 100_000_000), read_only=True),
    Param("publish_annotated", True, "Publish faces/image_annotated (drawn only while somebody subscribes)."),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", range=(0.1, 60.0),
          read_only=True),
    Param("resubscribe_after", 5.0, "Seconds without an image, while a publisher of image_topic is known, after "
          "which the image subscription is made anew (a DDS reader can stay matched and get nothing); 0: never.",
          range=(0.0, 3600.0), read_only=True),
    *qos_params("qos", "best_effort", 1, "the image subscription (depth 1 = newest frame only)"),
    *qos_params("output_qos", "reliable", 10, "faces/expressions and faces/image_annotated"),
]


def results_to_msg(results, header, width: int, height: int):
    """FaceResult list -> FaceExpressionArray (boxes clipped to the image)."""
    from fer_ros.msg import FaceExpression, FaceExpressionArray

    out = FaceExpressionArray(header=header, image_width=int(width), image_height=int(height))
    for r in results:
        x, y, w, h = (int(v) for v in r.box)
        x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
        x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        face = FaceExpression(face_id=int(r.face_id), expression=str(r.expression),
                              confidence=float(r.confidence), detection_score=float(r.detection_score))
        face.box = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0, height=y1 - y0, do_rectify=False)
        face.scores = np.asarray(r.scores, dtype=np.float32).reshape(7)
        out.faces.append(face)
    return out


class ExpressionNode(AutostartLifecycleNode):
    """The expression node, an rclpy lifecycle node: configure builds the pipeline (detector,
    model, engine) and the publishers; activate subscribes and starts the worker; deactivate
    stops processing and gives the GPU back (TensorRT: engine, buffers, CUDA context; activate
    takes it again from the engine kept in memory); cleanup frees the pipeline. With `autostart` (default) it configures
    and activates itself at start. In-process use (tests, fast bag replay):

        node = ExpressionNode(params={"backend": "onnxruntime"}, subscribe=False)
        array_msg = node.process_image(image_msg)   # synchronous; also publishes
    """

    def __init__(self, params: dict | None = None, subscribe: bool = True, **kwargs):
        overrides = list(kwargs.pop("parameter_overrides", []))
        defaults = {p.name: p.default for p in PARAMS}
        for name, value in (params or {}).items():
            if isinstance(defaults.get(name), float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # 0 for a float parameter would be a type error
            overrides.append(Parameter(name, value=value))
        super().__init__(kwargs.pop("node_name", "expression_node"), parameter_overrides=overrides, **kwargs)
        self.p = declare_params(self, PARAMS)
        self.subscribe = subscribe
        self.pipeline = self.pub = self.pub_annotated = self.sub = self._worker = self._watchdog = None
        self._quiet = QuietReader(self.p["resubscribe_after"])
        self._told_no_publisher = False
        self.backend = self.model_path = ""
        self._config_error = None

        self._lock = threading.Lock()
        self._process_lock = threading.Lock()  # one frame at a time through the pipeline
        self._wake = threading.Condition(self._lock)
        self._pending = None
        self._stop = False
        self.stats = dict(received=0, processed=0, dropped=0, malformed=0, errors=0, faces=0, lost=0, large=0,
                          resubscribed=0)
        self._latency = deque(maxlen=300)   # header stamp -> publish, ms
        self._proc_ms = deque(maxlen=300)   # pipeline time, ms
        self._done_times = deque(maxlen=300)
        self._recv_times = deque(maxlen=300)
        self._last_timings = {}
        self._last_size = (0, 0)
        publish_diagnostics_every(self, self.p["diagnostics_period"], self.diagnostics)
        if self.p["autostart"]:
            self.autostart()

    # -- lifecycle transitions --------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from fer_ros.msg import FaceExpressionArray

        try:
            self.pipeline = build_pipeline(self.p)
        except (ValueError, FileNotFoundError, ImportError) as exc:  # bad parameter or model: say which
            self._config_error = exc
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.backend = str(self.pipeline.classifier.backend)
        self.model_path = str(self.pipeline.classifier.model_path)
        out_qos = qos_from_params(self.p, "output_qos")
        self.pub = self.create_lifecycle_publisher(FaceExpressionArray, "faces/expressions", out_qos)
        self.pub_annotated = self.create_lifecycle_publisher(Image, "faces/image_annotated", out_qos)
        self.get_logger().info(
            f"configured: detector {self.p['detector']}, backend {self.backend}, model {self.model_path}, "
            f"{self.pipeline.classifier.views_per_face} view(s) per face (flip_average {self.p['flip_average']}, "
            f"crop_average {self.p['crop_average']})")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)  # enables the lifecycle publishers
        if self.pipeline is not None:
            self.pipeline.classifier.acquire_device()  # after a deactivate (TensorRT): engine from memory
            self.backend = str(self.pipeline.classifier.backend)
        if self.subscribe:
            self._stop = False
            self._quiet = QuietReader(self.p["resubscribe_after"])
            self._subscribe()
            self._worker = threading.Thread(target=self._work, name="expression_worker", daemon=True)
            self._worker.start()
            if self.p["resubscribe_after"] > 0:
                self._watchdog = self.create_timer(min(1.0, self.p["resubscribe_after"]), self._check_input)
        topic = self.sub.topic_name if self.sub else "(none: in-process)"
        self.get_logger().info(f"active: expressions from {topic} -> {self.pub.topic_name}")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        with self._process_lock:  # no frame is in the classifier now
            if self.pipeline is not None:
                self.pipeline.classifier.release_device()  # TensorRT: the GPU context goes back; no-op on a CPU
        self.get_logger().info("inactive: not processing images" + (
            ", GPU released" if self.backend == "tensorrt" else ""))
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._free()
        return super().on_shutdown(state)

    def _stop_processing(self):
        if self._watchdog is not None:  # first, so that it cannot make a subscription while this one goes
            self.destroy_timer(self._watchdog)
            self._watchdog = None
        with self._wake:
            self._stop = True
            self._pending = None
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=2.0)
            self._worker = None
        if self.sub is not None:
            self.destroy_subscription(self.sub)
            self.sub = None

    def _subscribe(self):
        events = SubscriptionEventCallbacks(message_lost=self._on_lost)
        self.sub = self.create_subscription(Image, self.p["image_topic"], self._on_image,
                                            qos_from_params(self.p, "qos"), event_callbacks=events)
        self._quiet.subscribed(time.monotonic())

    def _check_input(self):
        """A subscription that hears nothing while a publisher is known is made anew (see
        dds.QuietReader); with no publisher at all, the log says so once per quiet spell."""
        if self.sub is None:
            return
        if self._quiet.heard:
            self._told_no_publisher = False
        quiet = self._quiet.quiet(time.monotonic())
        if not quiet:
            return
        if self.count_publishers(self.sub.topic_name) == 0:
            if not self._told_no_publisher:  # a wrong topic, or a camera not started
                self._told_no_publisher = True
                seen = sorted(n for n in self.get_node_names() if n != self.get_name())
                self.get_logger().warning(f"no image for {quiet:.0f} s: no publisher of {self.sub.topic_name} "
                                          "is known (is the camera running, and is image_topic right?); "
                                          f"nodes seen: {', '.join(seen) or 'none'}")
            return
        self.destroy_subscription(self.sub)
        self._subscribe()
        self._quiet.renewed(time.monotonic())
        with self._lock:
            self.stats["resubscribed"] += 1
        self.get_logger().warning(
            f"no image for {quiet:.0f} s from {self.sub.topic_name} although a publisher is known: "
            f"subscribed again ({self.stats['resubscribed']} time(s) so far)")

    def _free(self, timeout: float = -1):
        # At exit (timeout >= 0) a frame still in the pipeline is not waited for: launch kills a
        # node that takes more than 5 s to stop after SIGINT.
        if self._process_lock.acquire(timeout=timeout):
            try:
                if self.pipeline is not None:
                    self.pipeline.close()  # stops the background scan thread (async_scan)
                    self.pipeline = None
            finally:
                self._process_lock.release()
        for pub in (self.pub, self.pub_annotated):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.pub = self.pub_annotated = None

    # -- newest-frame-only hand-over between the DDS callback and the worker --------------
    def _on_image(self, msg):
        with self._wake:
            self.stats["received"] += 1
            now = time.monotonic()
            self._recv_times.append(now)
            self._quiet.received(now)
            if self._pending is not None:
                self.stats["dropped"] += 1  # the worker was busy: the older frame is stale
            self._pending = msg
            self._wake.notify()

    def _on_lost(self, info):
        with self._lock:  # DDS gave up on these samples (large images over best-effort QoS)
            self.stats["lost"] += int(info.total_count_change)  # summed: a new subscription counts from 0

    def _work(self):
        while True:
            with self._wake:
                while self._pending is None and not self._stop:
                    self._wake.wait(0.5)
                if self._stop:
                    return
                msg, self._pending = self._pending, None
            try:
                self.process_image(msg)
            except Exception as exc:  # never let one bad frame kill the worker
                if not self.context.ok():  # shutting down (Ctrl-C): nothing left to publish to
                    return
                self.stats["errors"] += 1
                self.get_logger().error(f"processing failed: {exc!r}", throttle_duration_sec=5.0)

    # -- the work itself ------------------------------------------------------------------
    def process_image(self, msg, publish: bool = True):
        """Run the pipeline on one sensor_msgs/Image; return the FaceExpressionArray (also
        published when `publish`), or None when the image is malformed (logged, counted)."""
        try:
            bgr = image_msg_to_bgr(msg)
        except ValueError as exc:
            self.stats["malformed"] += 1
            self.get_logger().warn(f"skipping malformed image: {exc}", throttle_duration_sec=5.0)
            return None
        stamp = stamp_seconds(msg.header.stamp)
        large = 0 < self.p["large_frame_pixels"] < bgr.shape[0] * bgr.shape[1]
        with self._process_lock:
            if self.pipeline is None:
                raise RuntimeError(f"{self.get_name()} is not configured (lifecycle state {self.lifecycle_state})")
            t0 = time.perf_counter()
            results = self.pipeline.process(bgr, stamp=stamp if stamp > 0 else None)
            proc_ms = (time.perf_counter() - t0) * 1e3
        out = results_to_msg(results, msg.header, bgr.shape[1], bgr.shape[0])
        if publish and self.lifecycle_state == "active":
            self.pub.publish(out)
            if self.get_parameter("publish_annotated").value and self.pub_annotated.get_subscription_count():
                from fer_ros.perception.annotate import draw_results

                self.pub_annotated.publish(bgr_to_image_msg(draw_results(bgr, results), header=msg.header))
        now = time.monotonic()
        with self._lock:
            self.stats["processed"] += 1
            self.stats["faces"] = len(results)
            self.stats["large"] += large
            self._last_size = (bgr.shape[1], bgr.shape[0])
            self._proc_ms.append(proc_ms)
            self._done_times.append(now)
            self._last_timings = dict(getattr(self.pipeline, "last_timings", {}) or {})
            if stamp > 0:
                self._latency.append((self.get_clock().now().nanoseconds * 1e-9 - stamp) * 1e3)
        return out

    # -- diagnostics ----------------------------------------------------------------------
    def diagnostics(self) -> DiagnosticStatus:
        with self._lock:
            s = dict(self.stats)
            lat, proc = list(self._latency), list(self._proc_ms)
            done, recv = list(self._done_times), list(self._recv_times)
            timings = dict(self._last_timings)

        def pct(values, q):
            return float(np.percentile(values, q)) if values else float("nan")

        if self.pipeline is not None:  # the backend may fall back at run time (TensorRT)
            self.backend = str(self.pipeline.classifier.backend)
        state = self.lifecycle_state
        status = DiagnosticStatus(name=f"{self.get_name()}: facial expressions", hardware_id=self.backend)
        stale = bool(self.sub) and (not recv or recv[-1] < time.monotonic() - 5.0)
        if self._config_error is not None and self.pipeline is None:
            status.level, status.message = DiagnosticStatus.ERROR, f"configure failed: {self._config_error}"
        elif state != "active":
            status.level, status.message = DiagnosticStatus.OK, f"{state}: not processing (lifecycle)"
        elif s["processed"] == 0 and s["malformed"] and not s["errors"]:
            status.level, status.message = DiagnosticStatus.WARN, "all images so far were malformed"
        elif s["errors"] > 0 and s["processed"] == 0:
            status.level, status.message = DiagnosticStatus.ERROR, "processing fails (see log)"
        elif stale:
            status.level, status.message = DiagnosticStatus.WARN, "no images received in the last 5 s"
        elif s["lost"] or s["large"]:
            w, h = self._last_size
            status.level = DiagnosticStatus.WARN
            status.message = (f"{recent_rate(done):.1f} fps; {s['lost']} image(s) lost in transport, {s['large']} large "
                              f"(last {w}x{h}): downscale at the camera (camera_node max_width)")
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{recent_rate(done):.1f} fps, {s['faces']} face(s)"
        values = {
            "lifecycle_state": state, "input_rate_hz": f"{recent_rate(recv):.2f}", "processed_rate_hz": f"{recent_rate(done):.2f}",
            "latency_ms_p50": f"{pct(lat, 50):.1f}", "latency_ms_p95": f"{pct(lat, 95):.1f}",
            "processing_ms_mean": f"{float(np.mean(proc)) if proc else float('nan'):.1f}",
            "frames_received": s["received"], "frames_processed": s["processed"],
            "frames_dropped": s["dropped"], "frames_malformed": s["malformed"], "errors": s["errors"],
            "frames_lost_in_transport": s["lost"], "frames_large": s["large"], "resubscriptions": s["resubscribed"],
            "last_frame_size": "%dx%d" % self._last_size,
            "faces_in_last_frame": s["faces"], "backend": self.backend, "model": self.model_path,
            "detector": self.p["detector"],
            "views_per_face": self.pipeline.classifier.views_per_face if self.pipeline else 0,
        }
        values.update({f"last_{k}_ms": f"{v:.1f}" for k, v in timings.items()})
        status.values = key_values(values)
        return status

    def destroy_node(self):
        self._stop_processing()
        with self._lock:  # what this run did, in one line: the first thing to read when no label came out
            s = dict(self.stats)
        stop_logger(self).info(
            f"stopping: {s['received']} image(s) received, {s['processed']} processed, {s['dropped']} dropped "
            f"(busy), {s['lost']} lost in transport, {s['malformed']} malformed, {s['errors']} failed, "
            f"{s['resubscribed']} resubscription(s)")
        self._free(timeout=1.0)
        return super().destroy_node()


def main(args=None) -> int:
    # bad parameter or model: say which
    return run_node("expression_node", ExpressionNode, (ValueError, FileNotFoundError, ImportError), args)


if __name__ == "__main__":
    sys.exit(main())

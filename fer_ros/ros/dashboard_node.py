"""dashboard_node: serves the therapist's tablet dashboard (fer_ros.dashboard.app) from ROS.

In:  therapy/state (fer_ros/TherapyState, latched), faces/expressions (the child's expression),
     therapy/alert, and faces/image_annotated only while a browser shows the live image.
Out: therapy/answer (std_msgs/String card answers); calls the therapy node's
     therapy/{start,pause,resume,skip,stop} services and its parameter services (the pre-start
     form sets child_name, emotions and trial counts, which take effect at that start).

The web server (uvicorn) runs in its own thread; the node is spun by the main thread, so a
request waiting for a service reply never blocks the callbacks that deliver it.
"""

from __future__ import annotations

import collections
import datetime as _dt
import re
import secrets
import sys
import threading
import time

from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.srv import GetParameters, SetParametersAtomically
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from fer_ros import LABELS
from fer_ros.dashboard.app import VERBS, create_app, is_local
from fer_ros.msg import FaceExpressionArray, TherapyState
from fer_ros.ros.params import Param, declare_params, run_node

PARAMS = [
    Param("host", "127.0.0.1", "Interface to listen on; any other than 127.0.0.1/localhost needs the access "
                               "token, which is printed at start.", read_only=True),
    Param("port", 8080, "TCP port of the dashboard (0: any free port, printed at start).", range=(0, 65535),
          read_only=True),
    Param("token", "", "Access token; empty: none on 127.0.0.1, a new random one on any other interface.",
          read_only=True),
    Param("log_dir", "~/.ros/fer_ros/therapy_sessions",
          "The therapy node's session log folder, listed as the history.", read_only=True),
    Param("therapy_node", "therapy_node", "Name of the therapy node whose parameters the start form sets.",
          read_only=True),
    Param("frame_rate", 3.0, "Live images per second sent to a watching browser.", range=(0.2, 15.0), read_only=True),
    Param("frame_width", 640, "Width the live image is scaled down to (0: as published).", range=(0, 4096), read_only=True),
    Param("jpeg_quality", 70, "JPEG quality of the live image.", range=(10, 95), read_only=True),
    Param("watch_timeout", 3.0, "Seconds after a browser's last image request at which the annotated image "
                                "subscription is dropped.", range=(0.5, 60.0), read_only=True),
    Param("service_timeout", 3.0, "Seconds to wait for the therapy node's services.", range=(0.1, 60.0), read_only=True),
    Param("answer_wait", 1.0, "Seconds to wait for the therapy node to score a card answer before reporting "
                              "that it was not scored.", range=(0.0, 10.0), read_only=True),
]

LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATEST = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
SETTINGS = ("child_name", "emotions", "teaching_trials_per_emotion", "practice_trials_per_emotion",
            "practice_answer_mode")
MAX_ALERTS = 20
EXPRESSION_STALE_S = 2.0


def state_fields(msg: TherapyState) -> dict:
    return {name: getattr(msg, name) for name in msg.get_fields_and_field_types() if name != "header"}


def _wall() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


class DashboardNode(Node):
    """The dashboard's ROS side and its `Backend` for the web app. `serve=False` builds the app
    (`self.app`) without starting a server (tests use the framework's test client)."""

    def __init__(self, serve: bool = True, **kwargs):
        super().__init__("dashboard_node", **kwargs)
        self.p = declare_params(self, PARAMS)
        self.log_dir = self.p["log_dir"]
        self._lock = threading.Condition()
        self._state = None  # latest TherapyState fields
        self._faces = None  # (monotonic time, FaceExpressionArray)
        self._alerts = collections.deque(maxlen=MAX_ALERTS)
        self._image = None  # latest annotated Image (only while watched)
        self._jpeg = (None, None, 0.0)  # (image it was made from, bytes, monotonic time)
        self._watch_until = 0.0
        self._image_sub = None
        self.server = self._thread = None
        host = self.p["host"]
        if self.p["token"] and not re.fullmatch(r"[A-Za-z0-9_\-]{12,200}", self.p["token"]):
            raise ValueError("token must be 12-200 characters of A-Z, a-z, 0-9, '_' and '-'")
        self.token = self.p["token"] or ("" if is_local(host) else secrets.token_urlsafe(16))

        self.create_subscription(TherapyState, "therapy/state", self._on_state, LATCHED)
        self.create_subscription(FaceExpressionArray, "faces/expressions", self._on_faces, LATEST)
        self.create_subscription(String, "therapy/alert", self._on_alert, RELIABLE)
        self.pub_answer = self.create_publisher(String, "therapy/answer", RELIABLE)
        self.clients_ = {verb: self.create_client(Trigger, f"therapy/{verb}") for verb in VERBS}
        therapy = self.p["therapy_node"]
        self.get_params = self.create_client(GetParameters, f"{therapy}/get_parameters")
        self.set_params = self.create_client(SetParametersAtomically, f"{therapy}/set_parameters_atomically")
        self.create_timer(0.5, self._manage_image_subscription)
        self.app = create_app(self, token=self.token, frame_interval=1.0 / self.p["frame_rate"])
        if serve:
            self._serve(host, self.p["port"])

    # -- web server -------------------------------------------------------------------------
    def _serve(self, host: str, port: int) -> None:
        import socket

        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))  # bound here: a busy port is a clear error at start, not in a thread
        sock.listen(64)  # requests arriving before the server thread runs wait instead of being refused
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="dashboard_http")
        self._thread.start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        where = f" (listening on all interfaces as {host})" if host in ("0.0.0.0", "::") else ""
        self.get_logger().info(f"dashboard: open {url}{where}")

    def destroy_node(self):
        if self.server is not None:
            self.server.should_exit = True
            self._thread.join(timeout=3.0)
        return super().destroy_node()

    # -- subscriptions ----------------------------------------------------------------------
    def _on_state(self, msg: TherapyState) -> None:
        with self._lock:
            self._state = state_fields(msg)
            self._lock.notify_all()

    def _on_faces(self, msg: FaceExpressionArray) -> None:
        with self._lock:
            self._faces = (time.monotonic(), msg)

    def _on_alert(self, msg: String) -> None:
        with self._lock:
            self._alerts.append({"time": _wall(), "kind": msg.data.split(":", 1)[0][:40], "text": msg.data[:500]})

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._image = msg

    def _manage_image_subscription(self) -> None:
        """Subscribe to the annotated image only while a browser asked for it recently (the
        expression node draws it only while someone subscribes)."""
        watched = time.monotonic() < self._watch_until
        if watched and self._image_sub is None:
            self._image_sub = self.create_subscription(Image, "faces/image_annotated", self._on_image, LATEST)
        elif not watched and self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
            with self._lock:
                self._image, self._jpeg = None, (None, None, 0.0)

    # -- Backend for the web app ------------------------------------------------------------
    def state(self) -> dict:
        with self._lock:
            if self._state is None:
                return {**state_fields(TherapyState()), "received": False}
            return {**self._state, "received": True}

    def live(self) -> dict:
        with self._lock:
            faces, alerts, state = self._faces, list(self._alerts), self._state
        expression = None
        if faces is not None and time.monotonic() - faces[0] <= EXPRESSION_STALE_S and faces[1].faces:
            child_id = (state or {}).get("child_face_id", 0)
            chosen = [f for f in faces[1].faces if f.face_id == child_id and child_id]
            face = chosen[0] if chosen else max(faces[1].faces, key=lambda f: f.box.width * f.box.height)
            scores = list(face.scores) if len(face.scores) == len(LABELS) else []
            expression = {"face_id": int(face.face_id), "is_child": bool(chosen), "expression": face.expression,
                          "confidence": round(float(face.confidence), 3),
                          "scores": {label: round(float(s), 3) for label, s in zip(LABELS, scores)},
                          "faces": len(faces[1].faces)}
        return {"expression": expression, "alerts": alerts,
                "therapy_node": self.count_publishers("therapy/state") > 0}

    def settings(self) -> dict:
        try:
            response = self._call(self.get_params, GetParameters.Request(names=list(SETTINGS)), timeout=1.0)
        except TimeoutError as exc:
            return {"error": str(exc)}
        values = {name: parameter_value_to_python(value) for name, value in zip(SETTINGS, response.values)}
        values["emotions"] = list(values.get("emotions") or [])
        return values

    def command(self, verb: str, settings: dict | None) -> tuple[bool, str]:
        if verb not in VERBS:
            return False, f"unknown command {verb!r}"
        if settings:
            stage = self.state()["stage"]
            if stage not in ("idle", "done"):  # the form must not change a running session
                return False, f"a session is already running (stage {stage}); settings not changed"
            params = [Parameter(k, value=v).to_parameter_msg() for k, v in settings.items()]
            result = self._call(self.set_params, SetParametersAtomically.Request(parameters=params)).result
            if not result.successful:  # all or nothing: nothing was changed
                return False, f"settings refused: {result.reason}"
        response = self._call(self.clients_[verb], Trigger.Request())
        return bool(response.success), response.message

    def answer(self, label: str) -> tuple[bool, str]:
        with self._lock:
            before = dict(self._state or {})
        self.pub_answer.publish(String(data=label))
        if before.get("stage") != "practice" or before.get("phase") != "awaiting" or before.get("paused"):
            why = f"session paused ({before.get('pause_reason')})" if before.get("paused") else \
                f"no question asked now (stage {before.get('stage', 'unknown')}, phase {before.get('phase', '-')})"
            return False, f"{label}: not scored, {why}"
        deadline = time.monotonic() + self.p["answer_wait"]
        with self._lock:
            while (self._state or {}).get("attempted", 0) <= before.get("attempted", 0):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, f"{label}: not scored (no reply from the therapy node; " \
                                  "is practice_answer_mode 'card'?)"
                self._lock.wait(left)
            after = self._state
        return True, f"{label}: {after['last_outcome']} ({after['correct']}/{after['attempted']})"

    def frame(self) -> bytes | None:
        now = time.monotonic()
        self._watch_until = now + self.p["watch_timeout"]
        with self._lock:
            image, (source, jpeg, made) = self._image, self._jpeg
        if image is None:
            return None
        if image is source or now - made < 0.8 / self.p["frame_rate"]:
            return jpeg
        jpeg = self._encode(image)
        with self._lock:
            self._jpeg = (image, jpeg, now)
        return jpeg

    def _encode(self, msg: Image) -> bytes | None:
        import cv2

        from fer_ros.ros.image import image_msg_to_bgr

        try:
            bgr = image_msg_to_bgr(msg)
        except (ValueError, TypeError) as exc:
            self.get_logger().warning(f"annotated image not shown: {exc}", throttle_duration_sec=10.0)
            return None
        width = self.p["frame_width"]
        if width and bgr.shape[1] > width:
            bgr = cv2.resize(bgr, (width, round(bgr.shape[0] * width / bgr.shape[1])), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(self.p["jpeg_quality"])])
        return buf.tobytes() if ok else None

    def _call(self, client, request, timeout: float | None = None):
        """Call a service from a web-server thread, waiting at most `timeout` seconds."""
        timeout = self.p["service_timeout"] if timeout is None else timeout
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{client.srv_name} is not available (is the therapy node running?)")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            raise TimeoutError(f"{client.srv_name} did not answer within {timeout:g} s")
        return future.result()


def main(args=None) -> int:
    return run_node("dashboard_node", DashboardNode, (ValueError, OSError), args)


if __name__ == "__main__":
    sys.exit(main())

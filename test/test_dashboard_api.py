"""Dashboard JSON API through FastAPI's test client, against a real therapy node over rclpy."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from fer_ros import LABELS  # noqa: E402
from fer_ros.dashboard.app import create_app  # noqa: E402
from fer_ros.msg import FaceExpressionArray  # noqa: E402
from fer_ros.ros.dashboard_node import DashboardNode  # noqa: E402
from fer_ros.ros.image import bgr_to_image_msg  # noqa: E402
from fer_ros.ros.therapy_node import TherapyNode  # noqa: E402
from conftest import faces_msg  # noqa: E402

DOMAIN = random.randint(1, 100)


def wait_for(cond, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class System:
    """Therapy node (fake clock) + dashboard node + a tester node, spun in a background thread."""

    def __init__(self, tmp_path, **therapy):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=DOMAIN)
        self.now = 1000.0
        params = dict(log_dir=str(tmp_path), emotions=["happy"], teaching_trials_per_emotion=1,
                      practice_trials_per_emotion=1, intro_seconds=1.0, feedback_seconds=0.3, hold_seconds=0.3,
                      teaching_timeout=3.0, practice_timeout=30.0, face_lost_seconds=2.0, timeline_rate=5.0)
        params.update(therapy)
        self.therapy = TherapyNode(clock=lambda: self.now, context=self.ctx,
                                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.dash = DashboardNode(serve=False, context=self.ctx, parameter_overrides=[
            Parameter("log_dir", value=str(tmp_path)), Parameter("watch_timeout", value=0.5)])
        self.tester = Node("dashboard_tester", context=self.ctx)
        self.pub_faces = self.tester.create_publisher(FaceExpressionArray, "faces/expressions", 10)
        self.pub_image = self.tester.create_publisher(Image, "faces/image_annotated", 10)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        for n in (self.therapy, self.dash, self.tester):
            self.ex.add_node(n)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()
        self.client = TestClient(self.dash.app, base_url="http://127.0.0.1:8080")

    def step(self, seconds: float, expression: str = "neutral") -> None:
        """Let session time pass with the child's face in view."""
        for _ in range(max(1, round(seconds / 0.1))):
            self.now += 0.1
            self.pub_faces.publish(faces_msg(expression))
            time.sleep(0.01)

    def state(self) -> dict:
        r = self.client.get("/api/state")
        assert r.status_code == 200
        return r.json()

    def until(self, what: str, cond, seconds: float = 8.0, expression: str = "neutral") -> dict:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            st = self.state()
            if cond(st):
                return st
            self.step(0.1, expression)
        raise AssertionError(f"timed out waiting for {what}; state {self.state()}")

    def close(self):
        self.ex.shutdown()
        self.thread.join(timeout=5)
        for n in (self.dash, self.therapy, self.tester):
            n.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture
def system(tmp_path):
    s = System(tmp_path)
    yield s
    s.close()


def test_api_runs_a_session_and_lists_it(system, tmp_path):
    c = system.client
    st = wait_for(lambda: (s := system.state())["received"] and s, what="latched therapy state")
    assert st["stage"] == "idle" and set(st) >= {"session_id", "phase", "trial", "target_emotion", "correct"}
    cfg = c.get("/api/config").json()
    assert cfg["labels"] == list(LABELS) and cfg["settings"]["emotions"] == ["happy"]

    # a refusal comes back with the service's reason
    r = c.post("/api/command/pause", json={})
    assert r.status_code == 200 and r.json()["success"] is False and "no session running" in r.json()["message"]

    r = c.post("/api/command/start", json={"child_name": "Kim", "emotions": ["sad", "surprise"],
                                           "teaching_trials_per_emotion": 0, "practice_trials_per_emotion": 1})
    assert r.json()["success"] is True, r.json()
    assert system.therapy.session.cfg.emotions == ["sad", "surprise"]
    assert system.therapy.session.cfg.child_name == "Kim"
    assert c.post("/api/command/start", json={}).json()["success"] is False  # already running
    r = c.post("/api/command/start", json={"child_name": "Other", "emotions": ["fear"]}).json()
    assert r["success"] is False and "settings not changed" in r["message"]
    assert system.therapy.session.cfg.child_name == "Kim"
    system.until("introduction", lambda s: s["stage"] == "introduction")

    # an answer before any question is published but reported as not scored
    r = c.post("/api/answer", json={"answer": "sad"})
    assert r.json()["success"] is False and "not scored" in r.json()["message"]

    r = c.post("/api/command/skip", json={})
    assert r.json() == {"success": True, "message": "introduction ended by the therapist"}
    st = system.until("first practice question", lambda s: s["stage"] == "practice" and s["phase"] == "awaiting")
    assert st["target_emotion"] == "sad" and st["trials_total"] == 2
    r = c.post("/api/answer", json={"answer": "sad"})
    assert r.json() == {"success": True, "message": "sad: right (1/1)"}
    st = system.until("second question", lambda s: s["phase"] == "awaiting" and s["trial"] == 2)
    r = c.post("/api/answer", json={"answer": "happy"})
    assert r.json() == {"success": True, "message": "happy: wrong (1/2)"}
    st = system.until("session end", lambda s: s["stage"] == "done")
    assert (st["correct"], st["attempted"]) == (1, 2)

    live = c.get("/api/live").json()
    assert live["therapy_node"] is True
    assert live["expression"]["face_id"] == 4 and live["expression"]["expression"] == "neutral"
    assert list(live["expression"]["scores"]) == list(LABELS)

    sessions = wait_for(lambda: c.get("/api/sessions").json()["sessions"], what="session in history")
    s = sessions[0]
    assert s["session_id"] == st["session_id"] and s["score"] == "1/2" and s["end_reason"] == "completed"
    assert [(t["emotion"], t["outcome"], t["answer"]) for t in s["trials"]] == [("sad", "right", "sad"),
                                                                                ("surprise", "wrong", "happy")]
    png = c.get(f"/api/sessions/{s['session_id']}/timeline.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_api_rejects_bad_input_and_paths(system, tmp_path):
    c = system.client
    bad_starts = [{"emotions": ["joy"]}, {"emotions": []}, {"emotions": ["sad", "sad"]},
                  {"practice_trials_per_emotion": 101}, {"teaching_trials_per_emotion": -1},
                  {"child_name": "x" * 41}, {"child_name": "<script>"}, {"log_dir": "/tmp"}]
    for body in bad_starts:
        assert c.post("/api/command/start", json=body).status_code == 422, body
    assert system.therapy.session.stage == "idle"  # nothing was started by a rejected request
    assert c.post("/api/command/reboot", json={}).status_code == 422
    assert c.post("/api/command/pause", json={"emotions": ["sad"]}).status_code == 422
    assert c.post("/api/answer", json={"answer": "x" * 5000}).status_code == 413
    assert c.post("/api/answer", json={"answer": "banana"}).status_code == 422
    # what another web site in the same browser could send: a form post, or JSON from its origin
    assert c.post("/api/command/stop", data={"x": "1"}).status_code == 415
    assert c.post("/api/command/stop", content=b"").status_code == 415
    r = c.post("/api/command/start", json={}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and system.therapy.session.stage == "idle"
    assert c.post("/api/command/pause", json={}, headers={"Origin": "http://127.0.0.1:8080"}).status_code == 200
    # without a token only local host names are served (DNS rebinding)
    assert c.get("/api/state", headers={"Host": "rebind.example:8080"}).status_code == 421
    assert c.get("/api/state", headers={"Host": "localhost:8080"}).status_code == 200
    (tmp_path.parent / "secret.png").write_bytes(b"\x89PNG secret")
    for path in ("..%2Fsecret.png", "..", "session_20260101_000000", "%2Fetc%2Fpasswd"):
        r = c.get(f"/api/sessions/{path}/timeline.png")
        assert r.status_code == 404, path
        assert b"secret" not in r.content
    assert c.get("/api/sessions").json()["sessions"] == []


def test_live_image_only_while_watched(system):
    c = system.client
    image = bgr_to_image_msg(np.full((480, 640, 3), 80, np.uint8))

    def image_subscribers():
        return system.tester.count_subscribers("faces/image_annotated")

    time.sleep(0.6)
    assert image_subscribers() == 0 and c.get("/api/frame.jpg").status_code == 204
    wait_for(lambda: image_subscribers() == 1, what="image subscription while watched")

    def frame():
        system.pub_image.publish(image)
        r = c.get("/api/frame.jpg")
        return r if r.status_code == 200 else None

    r = wait_for(frame, what="a live frame")
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    wait_for(lambda: image_subscribers() == 0, what="subscription dropped when nobody watches")


class _Stub:
    log_dir = "/nonexistent"

    def state(self):
        return {"stage": "idle"}


def test_token_required_when_set():
    c = TestClient(create_app(_Stub(), token="s3cret"))
    assert c.get("/api/state").status_code == 401
    assert c.get("/api/state?token=wrong").status_code == 401
    r = c.get("/?token=s3cret")
    assert r.status_code == 200 and "Therapy session" in r.text
    assert c.get("/api/state").json() == {"stage": "idle"}  # the cookie set by the page load
    c2 = TestClient(create_app(_Stub(), token="s3cret"))
    assert c2.get("/api/state", headers={"X-Dashboard-Token": "s3cret"}).status_code == 200
    assert c2.get("/static/app.js", headers={"X-Dashboard-Token": "s3cret"}).status_code == 200


def test_both_launchers_start_the_dashboard_unless_dashboard_false():
    from fer_ros.ros import launcher, node_set

    config = node_set.source_config()
    for value, started in (("true", True), ("false", False)):
        values = {**node_set.argument_defaults(config), "dashboard": value, "session_log_dir": "/data/sessions"}
        plan = {spec.name: argv for spec, argv in launcher.plan(config, values)}
        assert ("dashboard_node" in plan) is started and "therapy_node" in plan
        if started:  # the history lists the folder the therapy node writes to
            argv = plan["dashboard_node"]
            assert argv[argv.index("-p", argv.index("--ros-args")) + 1] == 'log_dir:="/data/sessions"'


def test_face_lost_alert_shows_in_the_live_view(system):
    c = system.client
    assert c.post("/api/command/start", json={}).json()["success"] is True
    system.until("greeting", lambda s: s["phase"] == "free_play")
    for _ in range(30):  # the child leaves: 3 s of session time without faces
        system.now += 0.1
        time.sleep(0.01)
    live = wait_for(lambda: (v := c.get("/api/live").json())["alerts"] and v, what="an alert")
    alert = live["alerts"][-1]
    assert alert["kind"] == "face_lost" and "not seen" in alert["text"]
    assert system.state()["paused"] is True and system.state()["pause_reason"] == "face_lost"


def test_other_interfaces_need_the_printed_token(tmp_path):
    import urllib.error
    import urllib.request

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    node = None
    try:
        node = DashboardNode(context=ctx, parameter_overrides=[
            Parameter("host", value="0.0.0.0"), Parameter("port", value=0), Parameter("log_dir", value=str(tmp_path))])
        assert len(node.token) >= 16
        with pytest.raises(ValueError, match="token must be"):
            DashboardNode(context=ctx, serve=False, parameter_overrides=[Parameter("token", value="short")])
        base = f"http://127.0.0.1:{node.port}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/sessions", timeout=5)
        assert refused.value.code == 401
        with urllib.request.urlopen(f"{base}/api/sessions?token={node.token}", timeout=5) as r:
            assert r.status == 200 and b'"sessions":[]' in r.read()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)

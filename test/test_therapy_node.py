"""therapy_node through real rclpy: topics, services, latched state, and SIGKILL mid-session."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from fer_ros.msg import FaceExpressionArray, TherapyState  # noqa: E402
from fer_ros.therapy.log import read_events  # noqa: E402
from fer_ros.ros.therapy_node import TherapyNode  # noqa: E402
from conftest import faces_msg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
DOMAIN = random.randint(1, 100)


@pytest.fixture
def ctx():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN)
    yield context
    rclpy.shutdown(context=context)


class Harness:
    """TherapyNode on a fake clock + a tester node, spun by one executor."""

    def __init__(self, ctx, tmp_path, clock_start=1000.0, **params):
        self.now = clock_start
        overrides = dict(log_dir=str(tmp_path), emotions=["happy"], teaching_trials_per_emotion=1,
                         practice_trials_per_emotion=1, intro_seconds=1.0, feedback_seconds=0.5, hold_seconds=0.5,
                         teaching_timeout=3.0, practice_timeout=3.0, face_lost_seconds=2.0, timeline_rate=5.0)
        overrides.update(params)
        self.node = TherapyNode(clock=lambda: self.now, context=ctx,
                                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.tester = Node("therapy_tester", context=ctx)
        self.pub_faces = self.tester.create_publisher(FaceExpressionArray, "faces/expressions", 10)
        self.pub_answer = self.tester.create_publisher(String, "therapy/answer", 10)
        self.pub_command = self.tester.create_publisher(String, "therapy/command", 10)
        self.got = {"expression": [], "say": [], "alert": [], "state": []}
        for topic, key in (("robot/expression", "expression"), ("robot/say", "say"), ("therapy/alert", "alert")):
            self.tester.create_subscription(String, topic, self._collector(key), 10)
        self.tester.create_subscription(TherapyState, "therapy/state", self.got["state"].append, LATCHED)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.tester)

    def last(self) -> TherapyState:
        """Latest state received (an empty one before the first)."""
        return self.got["state"][-1] if self.got["state"] else TherapyState()

    def _collector(self, key):
        # a one-argument callback: rclpy passes message info to callbacks with two parameters
        def collect(msg):
            self.got[key].append(msg.data)
        return collect

    def spin(self, real_seconds=0.05):
        end = time.monotonic() + real_seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)

    def wait_for(self, cond, what, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            self.spin(0.02)
        raise AssertionError(f"timed out waiting for {what}; session {self.node.session.state} "
                             f"child {self.node.session._child} now {self.now}; got {self.got}")

    def step(self, expression="neutral", seconds=0.1, conf=0.9):
        """Publish one faces message (None: nobody) and let `seconds` of session time pass."""
        self.pub_faces.publish(faces_msg(expression, conf) if expression else FaceExpressionArray())
        self.spin(0.03)
        self.now += seconds

    def call(self, verb):
        client = self.tester.create_client(Trigger, f"therapy/{verb}")
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(Trigger.Request())
        self.wait_for(future.done, f"service therapy/{verb}")
        return future.result()

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()
        self.tester.destroy_node()


def test_node_runs_a_session_over_ros(ctx, tmp_path):
    h = Harness(ctx, tmp_path)
    try:
        h.wait_for(lambda: h.got["state"] and h.last().stage == "idle", "idle state")
        res = h.call("start")
        assert res.success and "started" in res.message
        assert not h.call("start").success  # already running
        h.wait_for(lambda: h.last().stage == "introduction", "introduction state")
        # the child appears -> greeting
        h.wait_for(lambda: (h.step("neutral") or True) and any("Hello" in s for s in h.got["say"]), "greeting")
        assert h.got["expression"][0] == "happy"
        # free play, then the teaching prompt for happy
        h.wait_for(lambda: (h.step("neutral") or True) and h.last().phase == "awaiting", "prompt")
        st = h.last()
        assert (st.stage, st.target_emotion, st.trial, st.trials_total) == ("teaching", "happy", 1, 1)
        assert st.child_face_id == 4 and st.session_id
        # therapist pause over the topic interface: nothing scored while paused
        h.pub_command.publish(String(data="pause"))
        h.wait_for(lambda: h.last().paused, "pause from the command topic")
        assert h.last().pause_reason == "therapist"
        for _ in range(10):
            h.step("happy")
        assert h.last().last_outcome == ""
        assert h.call("resume").success
        h.wait_for(lambda: (h.step("happy") or True) and h.last().last_outcome == "success", "success")
        assert any("Great job" in s for s in h.got["say"])
        # practice: the card answer comes on therapy/answer
        h.wait_for(lambda: (h.step("neutral") or True) and h.last().stage == "practice"
                   and h.last().phase == "awaiting", "practice prompt")
        h.pub_answer.publish(String(data="happy"))
        h.wait_for(lambda: h.last().last_outcome == "right", "right answer")
        h.wait_for(lambda: (h.step("neutral") or True) and h.last().stage == "done", "done")
        final = h.last()
        assert (final.correct, final.attempted) == (1, 1)
        assert "1 out of 1" in h.got["say"][-1]
        # a subscriber that joins now still gets the current state (transient local)
        late = []
        h.tester.create_subscription(TherapyState, "therapy/state", late.append, LATCHED)
        h.wait_for(lambda: late, "latched state for a late joiner")
        assert late[-1].stage == "done" and late[-1].correct == 1
        late_face = []
        h.tester.create_subscription(String, "robot/expression", lambda m: late_face.append(m.data), LATCHED)
        h.wait_for(lambda: late_face, "latched robot expression for a robot that connects late")
        assert late_face == [h.got["expression"][-1]] == ["happy"]
        folder = next(tmp_path.iterdir())
        events = read_events(folder / "events.jsonl")
        assert [e["outcome"] for e in events if e["event"] == "trial_end"] == ["success", "right"]
        assert (folder / "trials.csv").exists() and (folder / "timeline.png").exists()
        assert not h.call("pause").success  # nothing running any more
    finally:
        h.close()


def test_node_face_lost_alert_and_bad_settings(ctx, tmp_path):
    h = Harness(ctx, tmp_path, auto_start=True, intro_seconds=0.2)
    try:
        h.wait_for(lambda: (h.step("neutral") or True) and h.last().stage == "teaching", "teaching")
        h.wait_for(lambda: (h.step(None) or True) and h.got["alert"], "face-lost alert")
        assert h.got["alert"][0].startswith("face_lost:")
        assert h.last().paused and h.last().pause_reason == "face_lost"
        # a bad value is refused with a reason and the node keeps running
        result = h.node.set_parameters([Parameter("emotions", value=["happy", "joyful"])])[0]
        assert not result.successful and "emotions" in result.reason
        result = h.node.set_parameters([Parameter("confidence_threshold", value=0.8)])[0]
        assert result.successful and h.node.session.cfg.confidence_threshold == 0.8
    finally:
        h.close()


def test_bad_config_exits_with_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), ROS_DOMAIN_ID=str(DOMAIN))
    proc = subprocess.run([sys.executable, "-m", "fer_ros.ros.therapy_node", "--ros-args", "-p", "order:=sideways",
                           "-p", f"log_dir:={tmp_path}"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "order must be one of" in proc.stderr


def test_sigkill_node_mid_session_keeps_log(ctx, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), ROS_DOMAIN_ID=str(DOMAIN))
    args = dict(auto_start="true", log_dir=str(tmp_path), intro_seconds="0.3", feedback_seconds="0.2",
                hold_seconds="0.3", practice_timeout="1000.0", timeline_rate="10.0", emotions="[happy]")
    cmd = [sys.executable, "-m", "fer_ros.ros.therapy_node", "--ros-args"]
    for k, v in args.items():
        cmd += ["-p", f"{k}:={v}"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tester = Node("kill_tester", context=ctx)
    pub = tester.create_publisher(FaceExpressionArray, "faces/expressions", 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(tester)
    try:
        deadline = time.monotonic() + 60
        events = []
        while time.monotonic() < deadline:
            pub.publish(faces_msg("happy"))
            ex.spin_once(timeout_sec=0.05)
            found = list(tmp_path.glob("*/events.jsonl"))
            if found:
                events = read_events(found[0])
                # killed while practice waits for a card: after a finished trial, before the end
                if any(e["event"] == "prompt" and e.get("stage") == "practice" for e in events):
                    break
            assert proc.poll() is None, "therapy_node exited on its own"
        else:
            raise AssertionError(f"node never reached practice; events: {[e['event'] for e in events]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        ex.shutdown()
        tester.destroy_node()
    path = next(tmp_path.glob("*/events.jsonl"))
    lines = path.read_text().splitlines()
    after = read_events(path)
    assert len(after) >= len(events) and after[:len(events)] == events
    assert all(json.loads(line) for line in lines[:-1])  # every line but possibly a cut last one parses
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    assert after[0]["event"] == "session_start" and not any(e["event"] == "session_end" for e in after)
    assert [e["outcome"] for e in after if e["event"] == "trial_end"] == ["success"]


def test_docs_list_every_parameter():
    from fer_ros.ros.therapy_node import PARAMS

    doc = (REPO / "docs" / "therapy.md").read_text()
    missing = [p.name for p in PARAMS if f"| `{p.name}` |" not in doc]
    assert not missing, f"docs/therapy.md lacks parameters {missing}"


def test_auto_start_waits_for_a_running_clock(ctx, tmp_path):
    """With use_sim_time the clock reads 0 until /clock arrives: starting then would make every
    timer expire at the first real stamp."""
    h = Harness(ctx, tmp_path, clock_start=0.0, auto_start=True)
    try:
        h.node.tick()
        assert h.node.session.stage == "idle"
        h.now = 1_700_000_000.0
        h.node.tick()
        assert h.node.session.stage == "introduction" and h.node.session.t0 == 1_700_000_000.0
    finally:
        h.close()


def test_reports_of_a_finished_session_are_rewritten_at_shutdown(ctx, tmp_path, monkeypatch):
    """If writing the end-of-session reports is cut short (Ctrl-C while plotting, a full
    disk for a moment), shutting the node down writes them from the complete events file."""
    from fer_ros.therapy import log as session_log

    def fail(self, plot=True):
        self._file.close()
        self.closed = True
        raise RuntimeError("interrupted while writing the reports")

    monkeypatch.setattr(session_log.SessionLog, "finish", fail)
    h = Harness(ctx, tmp_path, auto_start=True, practice_mode="imitation")
    try:
        h.wait_for(lambda: (h.step("happy") or True) and h.last().stage == "done", "done")
        folder = next(tmp_path.iterdir())
        assert "error" in h.node.session.reports and not (folder / "timeline.png").exists()
    finally:
        h.close()
    assert (folder / "trials.csv").exists() and (folder / "timeline.png").exists()
    assert "happy" in (folder / "trials.csv").read_text()


def test_phrases_are_parameters_and_the_yaml_translates_them(ctx, tmp_path):
    from fer_ros.ros.node_set import load_config
    from fer_ros.ros.therapy_node import PARAMS, session_settings
    from fer_ros.therapy.config import DEFAULT_PHRASES, TherapyConfig

    yaml_params = load_config(REPO / "config" / "therapy.yaml")["therapy_node"]
    assert set(yaml_params) <= {p.name for p in PARAMS}, set(yaml_params) - {p.name for p in PARAMS}
    assert TherapyConfig.from_dict(session_settings({}, yaml_params)).phrases == DEFAULT_PHRASES

    h = Harness(ctx, tmp_path, **{"phrases.goodbye": "Fertig! {correct}/{attempted}",
                                  "emotion_words.happy": "froh"})
    try:
        assert h.node.session.cfg.phrases["goodbye"] == "Fertig! {correct}/{attempted}"
        bad = h.node.set_parameters([Parameter("phrases.greet", value="{emotion.__class__}")])[0]
        assert not bad.successful and "placeholder" in bad.reason
        ok = h.node.set_parameters([Parameter("phrases.greet", value="Hallo{name}!")])[0]
        assert ok.successful
        cfg = h.node.session.cfg
        assert cfg.phrases["greet"] == "Hallo{name}!" and cfg.phrases["goodbye"].startswith("Fertig")
        assert cfg.emotion_words["happy"] == "froh" and cfg.emotion_words["sad"] == "sad"
    finally:
        h.close()


def test_huge_answers_and_commands_are_cut_in_the_node_log_and_events(ctx, tmp_path, capfd):
    h = Harness(ctx, tmp_path)
    try:
        assert h.call("start").success
        capfd.readouterr()
        before = h.node.session.events[-1]["seq"]
        h.pub_answer.publish(String(data="a" * 1_000_000))
        h.pub_command.publish(String(data="c" * 100_000))
        h.wait_for(lambda: sum(e["event"] == "answer_ignored" for e in h.node.session.events) == 1,
                   "the huge answer to be handled")
        h.spin(0.5)  # the command too
        err = capfd.readouterr().err
        assert "999936 more characters" in err and "99936 more characters" in err
        assert len(err) < 5_000, len(err)
        assert h.call("stop").success
        events = [e for e in read_events(next(tmp_path.glob("*/events.jsonl"))) if e["seq"] > before]
        assert all(len(json.dumps(e)) < 1_000 for e in events)
    finally:
        h.close()

"""Scripted therapy sessions on the ROS-free core (synthetic faces, synthetic time)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from fer_ros import LABELS
from fer_ros.therapy.log import SessionLog, read_events
from fer_ros.therapy.session import (Face, Observation, TherapyConfig, TherapySession, normalize_answer, plan_trials,
                             select_child)

DT = 0.1
REPO = Path(__file__).resolve().parents[1]


def face(expression="neutral", conf=0.9, face_id=1, box=(200, 150, 120, 120)):
    """A face whose scores put `conf` on `expression` and spread the rest evenly."""
    rest = (1.0 - conf) / (len(LABELS) - 1)
    scores = [conf if label == expression else rest for label in LABELS]
    return Face(face_id, box, expression, conf, scores)


class Driver:
    """Feeds observations every DT seconds and keeps every output with its time."""

    def __init__(self, tmp_path=None, **cfg):
        base = dict(emotions=["happy", "sad"], teaching_trials_per_emotion=1, practice_trials_per_emotion=1,
                    intro_seconds=3.0, teaching_timeout=4.0, teaching_attempts=2, practice_timeout=5.0,
                    feedback_seconds=1.0, hold_seconds=1.0, confidence_threshold=0.5, face_lost_seconds=3.0,
                    distress_seconds=2.0, distress_threshold=0.7, timeline_rate=5.0)
        base.update(cfg)
        factory = (lambda: SessionLog(tmp_path, fsync=False)) if tmp_path is not None else None
        self.s = TherapySession(TherapyConfig.from_dict(base), log_factory=factory)
        self.t = 0.0
        self.out = []  # (t, kind, value)
        self._take()

    def _take(self, produced=None):
        for o in (produced if produced is not None else self.s.drain()):
            self.out.append((round(self.t, 3), o.kind, o.value))

    def start(self):
        ok, msg = self.s.start(self.t)
        assert ok, msg
        self._take()

    def run(self, seconds, faces=None, until=None):
        """Observe `faces` (a list, or None = nobody in view) every DT for `seconds`, or until
        `until(session)` is true. Returns the outputs of this call."""
        first = len(self.out)
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t = round(self.t + DT, 6)
            self._take(self.s.observe(Observation(self.t, list(faces or []), 640, 480)))
            if until is not None and until(self.s):
                break
        return self.out[first:]

    def tick(self, seconds):
        first = len(self.out)
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t = round(self.t + DT, 6)
            self._take(self.s.tick(self.t))
        return self.out[first:]

    def cmd(self, verb):
        result = self.s.command(verb, self.t)
        self._take()
        return result

    def answer(self, text):
        result = self.s.answer(text, self.t)
        self._take()
        return result

    def said(self, outs=None):
        return [v for _, k, v in (self.out if outs is None else outs) if k == "say"]

    def shown(self, outs=None):
        return [v for _, k, v in (self.out if outs is None else outs) if k == "expression"]

    def states(self, outs=None):
        return [v for _, k, v in (self.out if outs is None else outs) if k == "state"]

    def alerts(self, outs=None):
        return [v for _, k, v in (self.out if outs is None else outs) if k == "alert"]

    def events(self, kind):
        return [e for e in self.s.events if e["event"] == kind]


def in_phase(stage, phase, target=None):
    return lambda s: s.stage == stage and s.phase == phase and (target is None or s.target == target)


def test_full_card_session_every_stage(tmp_path):
    d = Driver(tmp_path)
    assert d.states()[-1].stage == "idle"
    d.start()
    # Introduction: nobody in view -> waits, no greeting, no face-lost pause (nobody arrived yet)
    outs = d.run(5.0, faces=None)
    assert d.s.phase == "waiting_for_face" and not d.s.paused and d.said(outs) == []
    # the child arrives -> greeting with a happy robot face, then free play
    outs = d.run(0.1, faces=[face("neutral")])
    assert d.shown(outs) == ["happy"] and "Hello" in d.said(outs)[0]
    assert d.s.phase == "free_play"
    greet_t = d.t
    outs = d.run(10.0, faces=[face("neutral")], until=in_phase("teaching", "awaiting", "happy"))
    stage_t = next(e["t"] for e in d.events("stage") if e["stage"] == "teaching")
    assert stage_t == pytest.approx(greet_t + 3.0, abs=0.11)  # intro_seconds of free play
    assert d.shown(outs)[-1] == "happy" and "make a happy face" in d.said(outs)[-1]

    # Teaching 1 (happy): success only after holding it >= hold_seconds
    prompt_t = d.t
    outs = d.run(0.5, faces=[face("neutral")])
    outs = d.run(3.0, faces=[face("happy", 0.8)], until=lambda s: s.last_outcome == "success")
    assert d.s.last_outcome == "success"
    held = d.t - (prompt_t + 0.5 + DT)
    assert 1.0 - 1e-6 <= held <= 1.0 + DT + 1e-6
    assert any("Great job" in s for s in d.said(outs))
    first = d.events("trial_end")[0]
    assert first["response_time_s"] == pytest.approx(first["end_t"] - first["start_t"], abs=1e-3)
    assert first["response_time_s"] == pytest.approx(held + 0.5 + DT, abs=1e-3)

    # Teaching 2 (sad): the child stays neutral -> encouragement + retry, then timeout and move on
    outs = d.run(5.0, faces=[face("neutral")], until=in_phase("teaching", "awaiting", "sad"))
    outs = d.run(12.0, faces=[face("neutral")], until=lambda s: s.last_outcome == "timeout")
    assert d.s.last_outcome == "timeout"
    assert any("try again" in s for s in d.said(outs)) and "Good try! Let's try another one." in d.said(outs)
    sad_end = d.events("trial_end")[-1]
    assert sad_end["emotion"] == "sad" and sad_end["attempts"] == 2
    assert sad_end["t"] - sad_end["start_t"] == pytest.approx(2 * 4.0, abs=0.25)  # two attempts of teaching_timeout
    assert len(d.events("retry")) == 1

    # Practice: card answers, wrong then right
    outs = d.run(5.0, faces=[face("neutral")], until=in_phase("practice", "awaiting", "happy"))
    assert d.shown(outs)[-1] == "happy" and "Show me the card" in d.said(outs)[-1]
    ok, msg = d.answer("Sad")
    assert ok and msg == "wrong" and d.s.attempted == 1 and d.s.correct == 0
    assert "I am happy" in d.said()[-1]
    ok, msg = d.answer("sad")  # during feedback: nobody asked -> ignored, not scored
    assert not ok and d.s.attempted == 1
    d.run(5.0, faces=[face("neutral")], until=in_phase("practice", "awaiting", "sad"))
    ok, msg = d.answer("sadness")
    assert ok and msg == "right" and (d.s.correct, d.s.attempted) == (1, 2)

    outs = d.run(5.0, faces=[face("neutral")], until=lambda s: s.stage == "done")
    assert d.s.stage == "done" and "1 out of 2" in d.said(outs)[-1]

    # state stream: every stage in order, published on change only
    stages = [s.stage for s in d.states()]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == \
        ["idle", "introduction", "teaching", "practice", "done"]
    assert all(a != b for a, b in zip(d.states(), d.states()[1:]))
    final = d.states()[-1]
    assert (final.correct, final.attempted, final.last_outcome) == (1, 2, "right")
    # trial numbering in the state while a trial runs
    happy_practice = [s for s in d.states() if s.stage == "practice" and s.target_emotion == "happy"][0]
    assert (happy_practice.trial, happy_practice.trials_total) == (1, 2)

    # the log: every event on disk, outcomes in order, CSV and PNG written
    folder = d.s.log.folder
    events = read_events(folder / "events.jsonl")
    assert events == d.s.events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "session_start" and events[-1]["event"] == "session_end"
    assert [e["outcome"] for e in events if e["event"] == "trial_end"] == ["success", "timeout", "wrong", "right"]
    assert [e["answer"] for e in events if e["event"] == "answer"] == ["sad", "sad"]
    ignored = [e for e in events if e["event"] == "answer_ignored"]
    assert len(ignored) == 1 and "no question" in ignored[0]["reason"]
    samples = [e for e in events if e["event"] == "child_expression"]
    assert {e["stage"] for e in samples} == {"introduction", "teaching", "practice"}
    gaps = [b["t"] - a["t"] for a, b in zip(samples, samples[1:])]
    assert min(gaps) >= 0.2 - 1e-6  # timeline_rate 5 Hz
    assert samples[0]["face_id"] is None and samples[-1]["expression"] == "neutral"
    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["emotion"], r["outcome"], r["answer"]) for r in rows] == [
        ("teaching", "happy", "success", "happy"), ("teaching", "sad", "timeout", ""),
        ("practice", "happy", "wrong", "sad"), ("practice", "sad", "right", "sad")]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["per_emotion"] == {"happy": {"teaching_success": 1, "practice_wrong": 1},
                                      "sad": {"teaching_timeout": 1, "practice_right": 1}}
    assert (summary["practice_correct"], summary["practice_attempted"], summary["trials"]) == (1, 2, 4)
    assert summary["end_reason"] == "completed" and summary["pauses"] == {} and summary["alerts"] == []
    assert 0.0 < summary["face_seen_fraction"] < 1.0  # nobody in view for the first 5 s
    png = (folder / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_hold_needs_continuous_confident_expression():
    d = Driver(teaching_timeout=30.0, emotions=["happy"])
    d.start()
    d.run(10.0, faces=[face()], until=in_phase("teaching", "awaiting"))
    # flickering happy/neutral and low-confidence happy never reach the hold time
    for _ in range(20):
        d.run(0.5, faces=[face("happy", 0.9)])
        d.run(0.2, faces=[face("neutral")])
    d.run(3.0, faces=[face("happy", 0.4)])
    assert d.s.phase == "awaiting" and d.s.last_outcome == ""
    d.run(1.5, faces=[face("happy", 0.6)])
    assert d.s.last_outcome == "success"
    assert d.events("trial_end")[0]["max_target_confidence"] == pytest.approx(0.9)


def test_hold_survives_missed_detections_but_not_absence():
    d = Driver(teaching_timeout=30.0, emotions=["happy"], hold_seconds=1.0)
    d.start()
    d.run(10.0, faces=[face()], until=in_phase("teaching", "awaiting"))
    # 0.6 s happy, the child away 0.6 s (> HOLD_GAP_SECONDS), 0.6 s happy: never 1 s in a row
    d.run(0.6, faces=[face("happy")])
    d.run(0.6, faces=None)
    d.run(0.6, faces=[face("happy")])
    assert d.s.last_outcome == ""
    # every 4th frame without a face (a detector miss): the hold goes on
    start = d.t
    while d.s.last_outcome == "" and d.t - start < 3.0:
        d.run(0.3, faces=[face("happy")])
        d.run(0.1, faces=None)
    assert d.s.last_outcome == "success" and d.t - start <= 1.3


def test_no_face_waits_then_pauses_and_auto_resumes():
    d = Driver(tmp_path=None, emotions=["happy"], face_lost_seconds=3.0, teaching_timeout=4.0)
    d.start()
    d.run(10.0, faces=[face()], until=in_phase("teaching", "awaiting"))
    d.run(1.0, faces=[face()])
    # child gone for 2.5 s (< face_lost_seconds): trial clock stands still, nothing scored
    outs = d.run(2.5, faces=None)
    assert not d.s.paused and d.alerts(outs) == [] and d.s.phase == "awaiting"
    d.run(2.5, faces=[face()])  # 1 + 2.5 = 3.5 s of face time < 4 s timeout despite 6 s elapsed
    assert d.s.phase == "awaiting" and d.s.last_outcome == ""
    # gone for longer: pause + alert at face_lost_seconds, and no timeout while paused
    outs = d.run(10.0, faces=None)
    assert d.s.paused and d.s.pause_reason == "face_lost"
    assert len(d.alerts(outs)) == 1 and d.alerts(outs)[0].startswith("face_lost:")
    pause = d.events("pause")[0]
    last_seen = max(e["t"] for e in d.events("child_expression") if e["face_id"] is not None)
    assert pause["t"] - last_seen == pytest.approx(3.0, abs=0.25)
    assert d.s.last_outcome == "" and not d.events("trial_end")
    assert d.states()[-1].paused and d.states()[-1].pause_reason == "face_lost"
    # face back for hold_seconds -> resumes by itself and asks again (robot shows happy again)
    outs = d.run(1.5, faces=[face()])
    assert not d.s.paused and d.shown(outs) == ["happy"]
    assert d.events("resume")[0]["by"] == "face_back"
    d.run(1.5, faces=[face("happy")])
    assert d.s.last_outcome == "success"


def test_face_lost_when_expression_messages_stop():
    """The expression node dies: only ticks arrive; the session must still notice."""
    d = Driver(emotions=["happy"], face_lost_seconds=3.0, observation_timeout=0.5)
    d.start()
    d.run(10.0, faces=[face()], until=in_phase("teaching", "awaiting"))
    outs = d.tick(4.0)
    assert d.s.paused and d.s.pause_reason == "face_lost" and len(d.alerts(outs)) == 1
    assert d.events("child_expression")[-1]["face_id"] is None


def test_distress_pauses_alerts_and_needs_therapist():
    d = Driver(distress_seconds=2.0, distress_threshold=0.7, intro_seconds=10.0)
    d.start()
    d.run(0.5, faces=[face()])
    # short distress (1 s) does not pause
    outs = d.run(1.0, faces=[face("fear", 0.9)])
    d.run(0.5, faces=[face()])
    assert not d.s.paused and d.alerts(outs) == []
    # sustained: angry+fear+sad share 0.8 (none alone above threshold) for 2 s -> pause
    scores = [0.3, 0.0, 0.3, 0.0, 0.2, 0.0, 0.2]
    distressed = Face(1, (200, 150, 120, 120), "angry", 0.3, scores)
    outs = d.run(2.5, faces=[distressed])
    assert d.s.paused and d.s.pause_reason == "distress"
    assert len(d.alerts(outs)) == 1 and d.alerts(outs)[0].startswith("distress:")
    assert d.shown(outs)[-1] == "neutral" and "break" in d.said(outs)[-1]
    # calm again: still paused until the therapist resumes; free play time is kept
    d.run(5.0, faces=[face()])
    assert d.s.paused and d.s.stage == "introduction"
    assert d.cmd("resume") == (True, "resumed")
    assert not d.s.paused
    d.run(12.0, faces=[face()], until=lambda s: s.stage == "teaching")
    resume_t = d.events("resume")[0]["t"]
    teach_t = next(e["t"] for e in d.events("stage") if e["stage"] == "teaching")
    paused_t = d.events("pause")[0]["t"]
    greet_t = d.events("say")[0]["t"]
    assert teach_t - resume_t == pytest.approx(10.0 - (paused_t - greet_t), abs=0.15)


def test_imitating_a_distress_emotion_is_not_distress():
    d = Driver(emotions=["sad"], teaching_timeout=10.0, hold_seconds=3.0, distress_seconds=1.0)
    d.start()
    d.run(10.0, faces=[face()], until=in_phase("teaching", "awaiting", "sad"))
    d.run(3.5, faces=[face("sad", 0.95)])
    assert not d.s.paused and d.s.last_outcome == "success"


def test_therapist_pause_resume_skip_stop(tmp_path):
    d = Driver(tmp_path, emotions=["happy", "sad", "angry"], practice_trials_per_emotion=1)
    assert d.cmd("pause") == (False, "no session running (stage idle); call start first")
    d.start()
    assert d.cmd("start")[0] is False  # already running
    d.run(0.5, faces=[face()])
    assert d.cmd("skip")[0] and d.s.stage == "teaching"  # therapist ends free play
    d.run(3.0, faces=[face()], until=in_phase("teaching", "awaiting", "happy"))
    d.run(1.0, faces=[face()])
    assert d.cmd("pause") == (True, "paused")
    assert d.states()[-1].paused and d.states()[-1].pause_reason == "therapist"
    # paused: no timeout, no success, no face-lost alert
    outs = d.run(20.0, faces=[face("happy")])
    outs += d.run(20.0, faces=None)
    assert d.s.phase == "awaiting" and d.s.last_outcome == "" and d.alerts(outs) == []
    assert d.cmd("pause")[0] is False
    outs_before = len(d.out)
    assert d.cmd("resume") == (True, "resumed")
    assert d.shown(d.out[outs_before:]) == ["happy"]  # asked again
    d.run(1.5, faces=[face("happy")])
    assert d.s.last_outcome == "success"
    d.run(3.0, faces=[face()], until=in_phase("teaching", "awaiting", "sad"))
    ok, msg = d.cmd("next")
    assert ok and "sad skipped" in msg and d.s.last_outcome == "skipped"
    assert d.s.target == "angry" and d.s.phase == "awaiting"
    # skip while paused: the next trial waits for resume
    d.cmd("pause")
    d.cmd("skip")
    assert d.s.stage == "practice" and d.s.phase == "feedback" and d.s.paused
    d.cmd("resume")
    d.run(3.0, faces=[face()], until=in_phase("practice", "awaiting"))
    ok, msg = d.cmd("stop")
    assert ok and d.s.stage == "done" and d.s.last_outcome == "stopped"
    assert d.cmd("stop")[0] is False
    events = read_events(d.s.log.folder / "events.jsonl")
    assert events[-1]["event"] == "session_end" and events[-1]["reason"] == "therapist"
    assert [e["command"] for e in events if e["event"] == "therapist"] == \
        ["skip", "pause", "pause", "resume", "skip", "pause", "skip", "resume", "stop"]
    assert [e["outcome"] for e in events if e["event"] == "trial_end"] == \
        ["success", "skipped", "skipped", "stopped"]
    assert (d.s.log.folder / "trials.csv").exists() and (d.s.log.folder / "timeline.png").exists()
    # a new session can start after done, in a new folder
    first = d.s.log.folder
    d.start()
    assert d.s.stage == "introduction" and d.s.log.folder != first and d.s.events[0]["event"] == "session_start"


def test_unknown_command_and_bad_answers():
    d = Driver()
    assert d.cmd("dance")[0] is False
    d.start()
    ok, msg = d.answer("purple")
    assert not ok and "not an emotion" in msg
    assert d.events("answer_ignored")[0]["answer"] == "purple"
    assert normalize_answer(" Surprised ") == "surprise" and normalize_answer("scared") == "fear"


def test_imitation_practice_right_wrong_timeout():
    d = Driver(emotions=["happy", "surprise", "sad"], teaching_trials_per_emotion=0, practice_answer_mode="imitation",
               practice_timeout=4.0)
    d.start()
    d.run(10.0, faces=[face()], until=in_phase("practice", "awaiting", "happy"))
    assert "same face" in d.said()[-1]
    d.run(2.0, faces=[face("happy")])
    assert d.s.last_outcome == "right"
    d.run(3.0, faces=[face()], until=in_phase("practice", "awaiting", "surprise"))
    # another expression held (and judged at the timeout, the child may still get it)
    d.run(5.0, faces=[face("disgust", 0.6)], until=lambda s: s.phase != "awaiting")
    assert d.s.last_outcome == "wrong" and d.events("trial_end")[-1]["answer"] == "disgust"
    d.run(3.0, faces=[face()], until=in_phase("practice", "awaiting", "sad"))
    d.run(5.0, faces=[face("neutral")], until=lambda s: s.phase != "awaiting")
    assert d.s.last_outcome == "timeout" and (d.s.correct, d.s.attempted) == (1, 2)
    assert d.answer("sad")[0] is False  # cards are not used in imitation mode


def test_child_selection_and_following():
    small = face(face_id=1, box=(20, 20, 60, 60))
    big_corner = face(face_id=2, box=(500, 350, 130, 130))
    central = face(face_id=3, box=(280, 200, 80, 80))
    faces = [small, big_corner, central]
    assert select_child(faces, "largest").face_id == 2
    assert select_child(faces, "central", width=640, height=480).face_id == 3
    assert select_child(faces, "face_id", face_id=1).face_id == 1
    assert select_child(faces, "face_id", face_id=9) is None

    d = Driver(child_selection="largest", child_reselect_seconds=1.0)
    d.start()
    d.run(0.5, faces=[small, central])
    assert d.s.state.child_face_id == 3
    # a bigger face (an adult leaning in) does not take over while the child is tracked
    d.run(1.0, faces=[small, central, big_corner])
    assert d.s.state.child_face_id == 3
    # the child's track drops for a moment: no switch within child_reselect_seconds (and the
    # state keeps naming the followed track, no flicker)
    d.run(0.5, faces=[big_corner])
    assert d.s.state.child_face_id == 3 and d.s._child is None
    d.run(0.3, faces=[central, big_corner])
    assert d.s.state.child_face_id == 3
    # gone for good: after the grace time the largest face is chosen
    d.run(1.5, faces=[big_corner])
    assert d.s.state.child_face_id == 2
    assert [e["face_id"] for e in d.events("child_selected")] == [3, 2]

    d = Driver(child_selection="face_id", child_face_id=1)
    d.start()
    d.run(1.0, faces=[big_corner, central])
    assert d.s.phase == "waiting_for_face"  # the configured child is not in view
    sample = d.events("child_expression")[-1]
    assert sample["face_id"] is None and sample["faces_in_view"] == 2
    d.run(0.2, faces=[big_corner, small])
    assert d.s.phase == "free_play" and d.s.state.child_face_id == 1


def test_trial_order():
    import random
    assert plan_trials(["happy", "sad"], 2, "fixed", random.Random(0)) == ["happy", "sad", "happy", "sad"]
    a = plan_trials(["happy", "sad", "angry", "fear"], 3, "shuffled", random.Random(5))
    b = plan_trials(["happy", "sad", "angry", "fear"], 3, "shuffled", random.Random(5))
    c = plan_trials(["happy", "sad", "angry", "fear"], 3, "shuffled", random.Random(6))
    assert a == b and a != c and sorted(a) == sorted(["happy", "sad", "angry", "fear"] * 3)
    d = Driver(order="shuffled", seed=5, emotions=["happy", "sad", "angry", "fear"], practice_trials_per_emotion=3)
    d.start()
    assert d.events("session_start")[0]["seed"] == 5
    assert len(d.s.plan["practice"]) == 12


@pytest.mark.parametrize("bad, message", [
    ({"emotions": ["happy", "joyful"]}, "emotions"),
    ({"emotions": []}, "emotions"),
    ({"order": "random"}, "order"),
    ({"child_selection": "face_id"}, "child_face_id"),
    ({"confidence_threshold": 1.5}, "confidence_threshold"),
    ({"practice_answer_mode": "voice"}, "practice_answer_mode"),
    ({"teaching_timeout": 0}, "teaching_timeout"),
    ({"colour": "red"}, "unknown therapy setting"),
])
def test_config_errors_name_the_setting(bad, message):
    with pytest.raises(ValueError, match=message):
        TherapyConfig.from_dict(bad)


def test_reconfigure_child_face_id_mid_session():
    d = Driver()
    d.start()
    d.run(0.5, faces=[face(face_id=1), face(face_id=2, box=(0, 0, 40, 40))])
    assert d.s.state.child_face_id == 1
    cfg = TherapyConfig.from_dict({**d.s.cfg.to_dict(), "child_selection": "face_id", "child_face_id": 2})
    d.s.reconfigure(cfg)
    d.run(0.2, faces=[face(face_id=1), face(face_id=2, box=(0, 0, 40, 40))])
    assert d.s.state.child_face_id == 2
    assert d.events("reconfigure")[0]["changes"] == {"child_selection": "face_id", "child_face_id": 2}


def test_shipped_config_is_a_short_demo_session_that_completes():
    """config/therapy.yaml must let `make run` (a still, smiling demo face) finish a session:
    every stage, no pause, in well under a minute of session time."""
    from fer_ros.ros.node_set import load_config
    from fer_ros.ros.therapy_node import SESSION_PARAMS, PARAMS

    section = load_config(REPO / "config" / "therapy.yaml")["therapy_node"]  # nested keys joined by "."
    assert set(section) <= {p.name for p in PARAMS}, "unknown parameter in config/therapy.yaml"
    assert section["auto_start"] is True
    for p in PARAMS:  # ROS refuses a YAML value whose type differs from the declared default
        if p.name in section:
            assert type(section[p.name]) is type(p.default), f"{p.name}: write {p.default!r}-typed values"
    cfg = {p.name: section[p.name] for p in SESSION_PARAMS if p.name in section}
    d = Driver(**cfg)
    d.start()
    d.run(60.0, faces=[face("happy", 0.8)], until=lambda s: s.stage == "done")
    assert d.s.stage == "done" and not d.events("pause") and d.t < 45.0
    assert {e["stage"] for e in d.events("stage")} == {"introduction", "teaching", "practice", "done"}
    assert len(d.events("trial_end")) == len(cfg["emotions"]) * (cfg["teaching_trials_per_emotion"]
                                                                  + cfg["practice_trials_per_emotion"])


def test_log_failures_are_reported_not_fatal(tmp_path):
    def refuse():
        raise PermissionError(13, "Permission denied", "/sessions")

    s = TherapySession(TherapyConfig(), log_factory=refuse)
    ok, msg = s.start(0.0)
    assert not ok and "cannot create the session log" in msg and s.stage == "idle"

    class FullDisk(SessionLog):
        def event(self, kind, t, **fields):
            if self._seq >= 3:
                raise OSError(28, "No space left on device")
            return super().event(kind, t, **fields)

    s = TherapySession(TherapyConfig(intro_seconds=1.0), log_factory=lambda: FullDisk(tmp_path))
    assert s.start(0.0)[0]
    outs = [o for t in range(1, 40) for o in s.observe(Observation(t * 0.1, [face()], 640, 480))]
    alerts = [o.value for o in outs if o.kind == "alert"]
    assert len(alerts) == 1 and alerts[0].startswith("log_error:") and "No space" in alerts[0]
    assert s.stage == "teaching"  # the session went on
    assert len(read_events(s.log.events_path)) == 3


def test_translated_phrases_and_emotion_words_are_said():
    d = Driver(emotions=["happy"], practice_trials_per_emotion=0, child_name="Ana",
               phrases={"greet": "¡Hola{name}!", "teach_prompt": "Esto es {emotion}. ¿Puedes poner cara {emotion}?"},
               emotion_words={"happy": "alegre"})
    d.start()
    said = [v for _, kind, v in d.run(8.0, [face("neutral")]) if kind == "say"]
    assert said[0] == "¡Hola Ana!"
    assert "Esto es alegre. ¿Puedes poner cara alegre?" in said
    assert "Now let's learn about feelings." in said  # untranslated keys keep the English default
    logged = [e["text"] for e in d.s.events if e["event"] == "say"]
    assert logged[:len(said)] == said


@pytest.mark.parametrize("key,text", [
    ("greet", "{emotion.__class__.__mro__}"),   # attribute access would reach Python objects
    ("teach_prompt", "{emotion:>100000}"),      # a width spec would make a huge string
    ("teach_prompt", "{emotion!r}"),
    ("teach_prompt", "Score {correct}"),        # only goodbye has the score
    ("greet", "{0}"),
    ("greet", "Hello {"),
    ("greet", "x" * 301),
    ("greet", "  "),
    ("no_such_phrase", "Hello"),
])
def test_bad_phrases_are_refused(key, text):
    with pytest.raises(ValueError, match="unknown phrase" if key == "no_such_phrase" else f"phrases.{key}"):
        TherapyConfig.from_dict({"phrases": {key: text}})


def test_phrase_checks_allow_what_a_translation_needs():
    cfg = TherapyConfig.from_dict({"phrases": {"goodbye": "Fertig! {correct} von {attempted} richtig. {{:-)}}"},
                                   "emotion_words": {"Sad": "traurig"}})
    assert cfg.say("goodbye", name="", correct=2, attempted=3) == "Fertig! 2 von 3 richtig. {:-)}"
    assert cfg.say("practice_wrong", name="", emotion="sad") == "Good try! I am traurig."
    for words in ({"joy": "x"}, {"happy": ""}, {"happy": "{name}"}):
        with pytest.raises(ValueError, match="emotion_words"):
            TherapyConfig.from_dict({"emotion_words": words})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to simulate a full disk")
def test_disk_full_mid_session_keeps_scoring_alerts_once_and_refuses_a_new_start(tmp_path):
    disk = {"full": False}

    def make_log():
        log = SessionLog(tmp_path, fsync=True)
        if disk["full"]:
            log._file = open("/dev/full", "a", encoding="utf-8")  # every write fails with ENOSPC
        return log

    d = Driver(emotions=["happy", "sad"], teaching_trials_per_emotion=0, practice_trials_per_emotion=2)
    d.s.log_factory = make_log
    d.start()
    awaiting = lambda s: s.phase == "awaiting"
    d.run(10, [face()], until=awaiting)
    assert d.s.answer("happy", d.t) == (True, "right")
    log = d.s.log
    log._file.close()
    log._file = open("/dev/full", "a", encoding="utf-8")  # the disk fills up mid-session
    answers = []
    for card in ("sad", "happy", "happy"):
        d.run(10, [face()], until=awaiting)
        answers.append(d.s.answer(card, d.t))
    assert answers == [(True, "right"), (True, "right"), (True, "wrong")]  # targets sad, happy, sad
    d.run(5, [face()], until=lambda s: s.stage == "done")
    assert (d.s.correct, d.s.attempted) == (3, 4)
    alerts = [v for _, kind, v in d.out if kind == "alert"]
    assert len(alerts) == 1 and alerts[0].startswith("log_error:") and "No space left" in alerts[0]
    assert d.s.answer("happy", d.t)[0] is False  # after the end: refused, no "I/O operation on closed file"
    # the file kept what was written before the failure, and nothing after it
    written = read_events(log.events_path)
    assert written and not any(e["event"] == "session_end" for e in written)
    # the reports (disk writable again here) come from the session's own copy: the full score
    assert d.s.reports["summary"].is_file()
    summary = json.loads(d.s.reports["summary"].read_text())
    assert (summary["practice_correct"], summary["practice_attempted"], summary["trials"]) == (3, 4, 4)

    disk["full"] = True  # still full: a new session is refused, with the reason, and leaves no folder
    folders = sorted(p.name for p in tmp_path.iterdir())
    ok, message = d.s.command("start", d.t)
    assert not ok and "cannot write the session log" in message and "No space left" in message
    assert d.s.state.stage == "idle" and sorted(p.name for p in tmp_path.iterdir()) == folders
    disk["full"] = False
    assert d.s.command("start", d.t)[0] is True


def test_long_answers_and_commands_are_cut_in_events_and_replies(tmp_path):
    d = Driver(tmp_path, emotions=["happy"])
    d.start()
    huge = "x" * 1_000_000
    ok, message = d.s.answer(huge, d.t)
    assert not ok and len(message) < 200 and "999936 more characters" in message
    ok, message = d.s.command("y" * 100_000, d.t)
    assert not ok and len(message) < 200 and "more characters" in message
    ok, message = d.s.answer("Happy" + " " * 100, d.t)  # padded past the limit: not a card word
    assert not ok
    d.s.close(d.t)
    ignored = [e for e in read_events(d.s.log.events_path) if e["event"] == "answer_ignored"]
    assert [len(e["answer"]) < 120 for e in ignored] == [True, True]
    assert d.s.log.events_path.stat().st_size < 20_000

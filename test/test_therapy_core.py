"""Scripted therapy sessions on the ROS-free core (synthetic faces, synthetic time): the session's flow."""

from __future__ import annotations

import csv
import json

import pytest

from fer_ros.therapy.log import read_events
from fer_ros.therapy.session import Face, normalize_answer, select_child
from therapy_driver import DT, Driver, face, in_phase


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

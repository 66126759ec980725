"""The therapy session's settings, phrases, trial order and logging failures (ROS-free core)."""

from __future__ import annotations

import json
import os

import pytest

from fer_ros.therapy.log import SessionLog, read_events
from fer_ros.therapy.session import Observation, TherapyConfig, TherapySession, plan_trials
from therapy_driver import REPO, Driver, face


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

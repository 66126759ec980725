"""Session log: durable JSON lines, crash tolerance, CSV and PNG reports."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fer_ros.therapy import log as session_log
from fer_ros.therapy.log import SessionLog, read_events

REPO = Path(__file__).resolve().parents[1]


def test_every_event_is_flushed_and_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(session_log.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = SessionLog(tmp_path, session_id="s1")
    for i in range(3):
        log.event("say", float(i), text=f"line {i}", scores=np.array([0.25, 0.75], dtype=np.float32))
        # visible to another reader right away, without closing the log
        lines = (tmp_path / "s1" / "events.jsonl").read_text().splitlines()
        assert len(lines) == i + 1 and json.loads(lines[-1])["text"] == f"line {i}"
    assert len(synced) == 3
    rec = read_events(log.events_path)[-1]
    assert rec["seq"] == 3 and rec["scores"] == [0.25, 0.75] and rec["event"] == "say" and "wall" in rec
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.event("say", 4.0)


def test_same_second_sessions_get_separate_folders(tmp_path):
    a, b = SessionLog(tmp_path, session_id="x"), SessionLog(tmp_path, session_id="x")
    assert a.folder != b.folder and b.session_id == "x_2"


def test_cut_last_line_is_skipped_but_corruption_inside_is_an_error(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"seq":1,"t":0,"event":"a"}\n{"seq":2,"t":1,"event":"b"}\n{"seq":3,"t":2,"ev')
    assert [e["seq"] for e in read_events(path)] == [1, 2]
    path.write_text('{"seq":1,"t":0,"event":"a"}\n{"seq":2,"t":1,"ev\n{"seq":3,"t":2,"event":"c"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_events(path)


# A session fed in a tight loop with synthetic time; killed from outside mid-session.
_CHILD = r"""
import sys, time
from fer_ros.therapy.log import SessionLog
from fer_ros.therapy.session import Face, Observation, TherapyConfig, TherapySession
# practice waits (nearly) forever for a card, so the session is always cut mid-way
cfg = TherapyConfig(emotions=["happy", "sad"], intro_seconds=1.0, teaching_timeout=1.0, practice_timeout=1e6,
                    feedback_seconds=0.2, hold_seconds=0.3, timeline_rate=10.0)
s = TherapySession(cfg, log_factory=lambda: SessionLog(sys.argv[1]))
s.start(0.0)
t = 0.0
while True:  # until killed
    t += 0.05
    scores = [0.02, 0.02, 0.02, 0.88, 0.02, 0.02, 0.02]
    s.observe(Observation(t, [Face(1, (10, 10, 80, 80), "happy", 0.88, scores)], 320, 240))
    s.drain()
    time.sleep(0.002)
"""


def test_sigkill_mid_session_leaves_a_valid_log(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        events_file = None
        while time.monotonic() < deadline:
            found = sorted(tmp_path.glob("*/events.jsonl"))
            if found and found[0].stat().st_size > 20_000:
                events_file = found[0]
                break
            assert proc.poll() is None, "session process died on its own"
            time.sleep(0.05)
        assert events_file is not None, "the session wrote too little in 60 s"
        before = len(read_events(events_file))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = read_events(events_file)  # raises if any line but a cut last one is broken
    assert len(events) >= before > 50
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["event"] == "session_start"
    assert not any(e["event"] == "session_end" for e in events)  # it really was cut mid-session
    assert all({"seq", "t", "wall", "event", "stage"} <= set(e) for e in events)
    # reports can be rebuilt from what survived
    assert session_log.main([str(events_file.parent)]) == 0
    rows = list(csv.DictReader(open(events_file.parent / "trials.csv")))
    assert len(rows) == sum(e["event"] == "trial_end" for e in events) and len(rows) >= 1
    assert (events_file.parent / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((events_file.parent / "summary.json").read_text())
    assert summary["end_reason"].startswith("interrupted") and summary["trials"] == len(rows)


def test_reports_from_events(tmp_path):
    log = SessionLog(tmp_path, session_id="r")
    log.event("session_start", 0.0, session_id="r", stage="idle")
    log.event("stage", 0.0, stage="teaching")
    for i, (emotion, outcome) in enumerate([("happy", "success"), ("sad", "timeout")]):
        log.event("trial_start", 1.0 + 5 * i, stage="teaching", trial=i + 1, emotion=emotion)
        log.event("child_expression", 2.0 + 5 * i, stage="teaching", face_id=1, expression="happy",
                  confidence=0.8, scores=[0.0, 0.0, 0.0, 0.8, 0.1, 0.0, 0.1])
        log.event("trial_end", 4.0 + 5 * i, stage="teaching", trial=i + 1, emotion=emotion, attempts=1,
                  outcome=outcome, answer="happy" if outcome == "success" else "", response_time_s=None,
                  start_t=1.0 + 5 * i, end_t=4.0 + 5 * i, max_target_confidence=0.8)
    log.event("session_end", 12.0, stage="done", correct=0, attempted=0)
    out = log.finish()
    rows = list(csv.DictReader(open(out["trials"])))
    assert [(r["session_id"], r["trial"], r["emotion"], r["outcome"], r["response_time_s"]) for r in rows] == \
        [("r", "1", "happy", "success", ""), ("r", "2", "sad", "timeout", "")]
    assert out["timeline"].stat().st_size > 5_000
    assert session_log.main([str(tmp_path / "missing")]) == 2

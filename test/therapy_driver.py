"""A scripted driver for the ROS-free therapy session: synthetic faces fed at synthetic times."""

from __future__ import annotations

from pathlib import Path

from fer_ros import LABELS
from fer_ros.therapy.log import SessionLog
from fer_ros.therapy.session import Face, Observation, TherapyConfig, TherapySession

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

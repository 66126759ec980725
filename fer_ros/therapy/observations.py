"""What the session sees and says: faces of an observation, the published state, outputs, and
the choice of the child's face among several."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from fer_ros import LABELS


@dataclass
class Face:
    """One face of an observation (the fields of fer_ros/FaceExpression that matter here)."""

    face_id: int
    box: tuple  # (x, y, w, h) pixels
    expression: str
    confidence: float
    scores: Sequence[float] = ()  # 7 probabilities in LABELS order (may be empty)

    def score(self, label: str) -> float:
        if len(self.scores) == len(LABELS):
            return float(self.scores[LABELS.index(label)])
        return float(self.confidence) if self.expression == label else 0.0


@dataclass
class Observation:
    t: float
    faces: list
    image_width: int = 0
    image_height: int = 0


@dataclass(frozen=True)
class State:
    """Mirror of fer_ros/TherapyState (without the header)."""

    session_id: str = ""
    stage: str = "idle"
    phase: str = "idle"
    paused: bool = False
    pause_reason: str = ""
    trial: int = 0
    trials_total: int = 0
    attempt: int = 0
    target_emotion: str = ""
    correct: int = 0
    attempted: int = 0
    last_outcome: str = ""
    child_face_id: int = 0


@dataclass(frozen=True)
class Output:
    """Something for the outside world: kind is expression | say | state | alert."""

    kind: str
    value: object


def select_child(faces: list, mode: str, face_id: int = 0, width: int = 0, height: int = 0) -> Optional[Face]:
    """The face to follow: the given id, the largest box, or the one nearest the image centre
    (ties -> larger). Without image size, 'central' uses the centre of all boxes."""
    if not faces:
        return None
    if mode == "face_id":
        return next((f for f in faces if int(f.face_id) == int(face_id)), None)
    area = lambda f: float(f.box[2]) * float(f.box[3])
    if mode == "central":
        if width > 0 and height > 0:
            cx, cy = width / 2.0, height / 2.0
        else:
            xs = [f.box[0] + f.box[2] / 2.0 for f in faces]
            ys = [f.box[1] + f.box[3] / 2.0 for f in faces]
            cx, cy = sum(xs) / len(xs), sum(ys) / len(ys)
        dist = lambda f: (f.box[0] + f.box[2] / 2.0 - cx) ** 2 + (f.box[1] + f.box[3] / 2.0 - cy) ** 2
        return min(faces, key=lambda f: (dist(f), -area(f)))
    return max(faces, key=area)

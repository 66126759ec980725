"""ROS-free therapy session: Introduction -> Teaching -> Practice -> Done.

`TherapySession` is a state machine fed with plain observations of the faces in view
(`observe`), card answers (`answer`), therapist verbs (`command`) and clock ticks (`tick`),
each call carrying the time in seconds. It never reads a clock itself, so tests drive it
with synthetic time and the node with ROS time (sim time in bag replays). Every call
returns the robot commands / state changes / alerts it produced (`Output`), and every
event goes to the session log (`fer_ros.therapy.log`) as it happens.

Stages (see docs/therapy.md):
- introduction: wait for the child's face, greet, free play for `intro_seconds` (or until
  the therapist skips);
- teaching: per emotion the robot shows it and asks the child to imitate; success when the
  child's face shows it with confidence >= threshold for >= hold time; retry after a timeout
  up to `teaching_attempts` times, then move on;
- practice: the robot shows an emotion, the child answers with a card (`answer`) or, in
  imitation mode, with the face; right/wrong feedback, score kept;
- done: goodbye, CSV + PNG written.

Wellbeing: while the child's face is not seen, trial timers stand still and nothing is
scored; after `face_lost_seconds` the session pauses (alert), and resumes by itself when
the face is back (`auto_resume_face`). Sustained distress pauses it (alert) until the
therapist resumes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from fer_ros import LABELS

STAGES = ("idle", "introduction", "teaching", "practice", "done")
VERBS = ("start", "pause", "resume", "skip", "stop")

#: A held expression survives gaps without the child's face up to this long (missed detections,
#: about 6% of frames with Haar on a moving face); longer gaps start the hold over.
HOLD_GAP_SECONDS = 0.5

#: Card words accepted besides the labels themselves (tablets and card readers vary).
ANSWER_ALIASES = {
    "anger": "angry", "mad": "angry", "disgusted": "disgust", "scared": "fear", "afraid": "fear",
    "fearful": "fear", "happiness": "happy", "joy": "happy", "sadness": "sad", "surprised": "surprise",
    "calm": "neutral",
}

#: What the robot says; `{emotion}`, `{name}`, `{correct}`, `{attempted}` are filled in.
PHRASES = {
    "greet": "Hello{name}! I am so happy to see you. Let's play together!",
    "teaching_intro": "Now let's learn about feelings.",
    "teach_prompt": "This is {emotion}. Can you make a {emotion} face, like me?",
    "teach_retry": "Let's try again. Can you show me {emotion}?",
    "teach_success": "Great job! That is a {emotion} face!",
    "teach_timeout": "Good try! Let's try another one.",
    "practice_intro": "Now it's your turn to guess how I feel.",
    "practice_prompt_card": "How do I feel? Show me the card.",
    "practice_prompt_imitation": "How do I feel? Make the same face as me.",
    "practice_right": "Yes! I am {emotion}. Well done!",
    "practice_wrong": "Good try! I am {emotion}.",
    "practice_timeout": "That's okay. I was feeling {emotion}. Let's try another one.",
    "face_lost": "Where did you go? Come back and play with me!",
    "distress": "Let's take a little break.",
    "resume": "Let's keep playing!",
    "goodbye": "All done! You got {correct} out of {attempted}. Thank you for playing with me!",
    "stopped": "Let's stop here. Thank you for playing with me!",
}


@dataclass
class TherapyConfig:
    """Session settings; every field is a therapy_node parameter of the same name."""

    emotions: list = field(default_factory=lambda: ["happy", "sad", "angry", "surprise"])
    teaching_trials_per_emotion: int = 1
    practice_trials_per_emotion: int = 2
    order: str = "fixed"  # fixed | shuffled
    seed: int = 0  # shuffled order seed; -1 = different every session (the seed used is logged)
    intro_seconds: float = 60.0
    teaching_timeout: float = 20.0
    teaching_attempts: int = 2
    practice_timeout: float = 20.0
    feedback_seconds: float = 4.0
    confidence_threshold: float = 0.5
    hold_seconds: float = 1.0
    child_selection: str = "largest"  # largest | central | face_id
    child_face_id: int = 0
    child_reselect_seconds: float = 1.0
    practice_answer_mode: str = "card"  # card | imitation
    distress_labels: list = field(default_factory=lambda: ["angry", "fear", "sad"])
    distress_threshold: float = 0.7
    distress_seconds: float = 5.0
    face_lost_seconds: float = 10.0
    auto_resume_face: bool = True
    observation_timeout: float = 1.0
    timeline_rate: float = 2.0
    child_name: str = ""

    @classmethod
    def from_dict(cls, values: dict) -> "TherapyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown therapy setting(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TherapyConfig":
        """Raise ValueError naming the bad setting; normalises label case."""
        self.emotions = [str(e).strip().lower() for e in self.emotions]
        self.distress_labels = [str(e).strip().lower() for e in self.distress_labels]
        bad = [e for e in self.emotions if e not in LABELS]
        if bad or not self.emotions:
            raise ValueError(f"emotions must be a non-empty subset of {LABELS}, got {self.emotions}")
        if len(set(self.emotions)) != len(self.emotions):
            raise ValueError(f"emotions has duplicates: {self.emotions}")
        bad = [e for e in self.distress_labels if e not in LABELS]
        if bad:
            raise ValueError(f"distress_labels must be labels from {LABELS}, got {bad}")
        for name, allowed in (("order", ("fixed", "shuffled")), ("child_selection", ("largest", "central", "face_id")),
                              ("practice_answer_mode", ("card", "imitation"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("teaching_trials_per_emotion", "practice_trials_per_emotion"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if int(self.teaching_attempts) < 1:
            raise ValueError("teaching_attempts must be >= 1")
        for name in ("intro_seconds", "feedback_seconds", "hold_seconds", "child_reselect_seconds",
                     "timeline_rate"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("teaching_timeout", "practice_timeout", "distress_seconds", "face_lost_seconds",
                     "observation_timeout"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("confidence_threshold", "distress_threshold"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.child_selection == "face_id" and int(self.child_face_id) < 1:
            raise ValueError("child_selection 'face_id' needs child_face_id >= 1")
        return self


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


def normalize_answer(text: str) -> Optional[str]:
    """A label from a card word ('Happy', ' surprised ' -> 'happy', 'surprise'), else None."""
    word = str(text).strip().lower()
    word = ANSWER_ALIASES.get(word, word)
    return word if word in LABELS else None


def plan_trials(emotions: Sequence[str], per_emotion: int, order: str, rng: random.Random) -> list:
    """Round-robin (fixed) or shuffled list of target emotions for one stage."""
    trials = [e for _ in range(int(per_emotion)) for e in emotions]
    if order == "shuffled":
        rng.shuffle(trials)
    return trials


class TherapySession:
    """The session state machine. Not thread-safe: call it from one thread (the node does)."""

    def __init__(self, config: TherapyConfig | None = None, log_factory: Callable[[], object] | None = None):
        self.cfg = (config or TherapyConfig()).validate()
        self.log_factory = log_factory
        self.log = None
        self.events: list[dict] = []  # everything logged this session (also when there is no log file)
        self.outbox: list[Output] = []
        self._reset()
        self._emit_state()

    # ------------------------------------------------------------------ public API
    def start(self, t: float) -> tuple[bool, str]:
        if self.stage not in ("idle", "done"):
            return False, f"a session is already running (stage {self.stage})"
        if self.stage == "done":
            self._reset()
        try:  # no log, no session: the log is what the therapist and the study keep
            log = self.log_factory() if self.log_factory else None
        except OSError as exc:
            return self._finish_call(False, f"cannot create the session log: {exc}")
        self._advance(t)
        self.t0 = t
        self.log = log
        self._log_error = None
        self.session_id = getattr(self.log, "session_id", "") or ""
        seed = self.cfg.seed if self.cfg.seed >= 0 else random.SystemRandom().randrange(2 ** 31)
        rng = random.Random(seed)
        self.plan = {
            "teaching": plan_trials(self.cfg.emotions, self.cfg.teaching_trials_per_emotion, self.cfg.order, rng),
            "practice": plan_trials(self.cfg.emotions, self.cfg.practice_trials_per_emotion, self.cfg.order, rng),
        }
        self._event("session_start", session_id=self.session_id, seed=seed, config=self.cfg.to_dict(),
                    plan=self.plan)
        self._enter_stage("introduction")
        return self._finish_call(True, f"session {self.session_id or ''} started".replace("  ", " "))

    def command(self, verb: str, t: float) -> tuple[bool, str]:
        """Therapist control: start, pause, resume, skip (also 'next'), stop. Returns (ok, message)."""
        verb = str(verb).strip().lower()
        verb = {"next": "skip", "advance": "skip", "continue": "resume"}.get(verb, verb)
        if verb not in VERBS:
            return False, f"unknown command {verb!r}; use one of {', '.join(VERBS)}"
        if verb == "start":
            return self.start(t)
        self._advance(t)
        if self.stage in ("idle", "done"):
            return self._finish_call(False, f"no session running (stage {self.stage}); call start first")
        self._event("therapist", command=verb)
        if verb == "pause":
            if self.paused and self.pause_reason == "therapist":
                return self._finish_call(False, "already paused")
            self._pause("therapist", alert=False)
            return self._finish_call(True, "paused")
        if verb == "resume":
            if not self.paused:
                return self._finish_call(False, "not paused")
            self._resume("therapist")
            return self._finish_call(True, "resumed")
        if verb == "skip":
            return self._finish_call(True, self._skip())
        self._end_session("therapist")
        return self._finish_call(True, "stopped")

    def answer(self, text: str, t: float) -> tuple[bool, str]:
        """A card answer (practice, card mode). Returns (accepted, message)."""
        self._advance(t)
        label = normalize_answer(text)
        if label is None:
            self._event("answer_ignored", answer=str(text), reason="not an emotion label")
            return self._finish_call(False, f"{text!r} is not an emotion; use one of {', '.join(LABELS)}")
        reason = None
        if self.stage != "practice" or self.phase != "awaiting":
            reason = f"no question asked (stage {self.stage}, phase {self.phase})"
        elif self.paused:
            reason = f"session paused ({self.pause_reason})"
        elif self.cfg.practice_answer_mode != "card":
            reason = "practice_answer_mode is imitation: answers come from the face"
        if reason:
            self._event("answer_ignored", answer=label, reason=reason)
            return self._finish_call(False, reason)
        self._event("answer", answer=label, source="card")
        self._practice_answer(label)
        return self._finish_call(True, "right" if self.last_outcome == "right" else "wrong")

    def observe(self, obs: Observation) -> list:
        """Faces seen at time obs.t. Returns the outputs produced."""
        self._advance(obs.t, timeline=False)
        self._last_obs_t = obs.t
        self._faces_in_view = len(obs.faces)
        child = self._pick_child(obs)
        self._child = child
        if child is not None:
            self._child_seen_t = obs.t
            if self._child_visible_since is None:
                self._child_visible_since = obs.t
        else:
            self._child_visible_since = None
        self._on_child(obs.t, child)
        if self.stage not in ("idle", "done"):
            self._timeline()
        self._finish_call(True, "")
        return self.drain()

    def tick(self, t: float) -> list:
        """Let time pass without a new observation (timeouts, face loss, timeline)."""
        self._advance(t)
        self._finish_call(True, "")
        return self.drain()

    def drain(self) -> list:
        out, self.outbox = self.outbox, []
        return out

    def reconfigure(self, config: TherapyConfig) -> None:
        """New settings, effective now; the trial plan (emotions, trials, order, seed) only at the
        next start. Changing child selection drops the followed face."""
        config.validate()
        if (config.child_selection, config.child_face_id) != (self.cfg.child_selection, self.cfg.child_face_id):
            self._child_id, self._child = None, None
        changed = {k: v for k, v in config.to_dict().items() if self.cfg.to_dict()[k] != v}
        self.cfg = config
        if self.stage not in ("idle", "done") and changed:
            self._event("reconfigure", changes=changed)

    def close(self, t: float, reason: str = "shutdown") -> None:
        """End a running session (node shutdown): logs session_end and writes the reports."""
        if self.stage not in ("idle", "done"):
            self._advance(t)
            self._end_session(reason)
            self._finish_call(True, "")

    @property
    def state(self) -> State:
        trials = self.plan.get(self.stage, []) if self.stage in ("teaching", "practice") else []
        return State(session_id=self.session_id, stage=self.stage, phase=self.phase, paused=self.paused,
                     pause_reason=self.pause_reason if self.paused else "",
                     trial=self.trial_idx + 1 if trials and self.target else 0,
                     trials_total=len(trials), attempt=self.attempt if self.stage == "teaching" else 0,
                     target_emotion=self.target or "", correct=self.correct, attempted=self.attempted,
                     last_outcome=self.last_outcome,
                     child_face_id=self._followed_id())

    # ------------------------------------------------------------------ internals
    def _followed_id(self) -> int:
        """Track id followed as the child's, kept through brief misses (no state flicker), 0 once lost."""
        if self._child_id is None or self._child_seen_t is None or self.now is None:
            return 0
        grace = max(self.cfg.child_reselect_seconds, self.cfg.observation_timeout)
        return self._child_id if self.now - self._child_seen_t <= grace else 0

    def _reset(self) -> None:
        self.stage, self.phase = "idle", "idle"
        self.paused, self.pause_reason, self._paused_at = False, "", None
        self.session_id, self.t0, self.now = "", None, None
        self.plan: dict = {}
        self.trial_idx, self.attempt, self.target = 0, 0, None
        self.correct, self.attempted, self.last_outcome = 0, 0, ""
        self.trials: list[dict] = []
        self._stage_t = None
        self._deadline = None  # end of free play / feedback (session clock)
        self._after_deadline = None
        self._active = 0.0  # face-visible, unpaused seconds of the current attempt
        self._trial_start_t = None
        self._prompt_t = None
        self._max_target = 0.0
        self._hold = {}  # label -> time the child started holding it
        self._held_other = None
        self._child = None
        self._child_id = None
        self._child_seen_t = None
        self._child_visible_since = None
        self._last_obs_t = None
        self._faces_in_view = 0
        self._distress_since = None
        self._next_timeline_t = None
        self._last_state = None
        self.reports: dict = {}
        self._log_error = None

    def _t(self) -> float:
        return 0.0 if self.t0 is None else self.now - self.t0

    def _event(self, kind: str, **fields) -> None:
        fields.setdefault("stage", self.stage)
        if self.stage in ("teaching", "practice") and self.target and self.trial_idx < len(self.plan[self.stage]):
            fields.setdefault("trial", self.trial_idx + 1)
        t = round(self._t(), 4)
        record = None
        if self.log is not None:
            try:
                record = self.log.event(kind, t, **fields)
            except OSError as exc:  # disk full, USB stick pulled: keep the session going, alert once
                if self._log_error is None:
                    self._log_error = str(exc)
                    self.outbox.append(Output("alert", f"log_error: cannot write {self.log.events_path}: {exc}"))
        if record is None:
            record = {"seq": len(self.events) + 1, "t": t, "event": kind, **fields}
        self.events.append(record)

    def _say(self, key: str, **kw) -> None:
        name = f" {self.cfg.child_name}" if self.cfg.child_name else ""
        text = PHRASES[key].format(name=name, correct=self.correct, attempted=self.attempted, **kw)
        self.outbox.append(Output("say", text))
        self._event("say", text=text)

    def _show(self, emotion: str) -> None:
        self.outbox.append(Output("expression", emotion))
        self._event("robot_expression", expression=emotion)

    def _alert(self, reason: str, text: str) -> None:
        self.outbox.append(Output("alert", f"{reason}: {text}"))
        self._event("alert", reason=reason, text=text)

    def _emit_state(self) -> None:
        st = self.state
        if st != self._last_state:
            self._last_state = st
            self.outbox.append(Output("state", st))

    def _finish_call(self, ok: bool, message: str) -> tuple[bool, str]:
        self._emit_state()
        return ok, message

    def _child_fresh(self) -> bool:
        """The child's face was in the latest observation and that observation is recent."""
        return (self._child is not None and self._last_obs_t is not None
                and self.now - self._last_obs_t <= self.cfg.observation_timeout)

    # time ---------------------------------------------------------------
    def _advance(self, t: float, timeline: bool = True) -> None:
        """Move the session clock to t and fire the timers that have expired (one deadline per call)."""
        t = float(t)
        if self.now is None:
            self.now = t
        if t < self.now:  # clocks jumping back (bag loop) must not unwind the session
            t = self.now
        dt = t - self.now
        self.now = t
        if not self._child_fresh() and self._child is not None:
            self._child = None  # observations stopped coming: the face is not seen any more
            self._child_visible_since = None
        if self._child_seen_t is None or t - self._child_seen_t > min(HOLD_GAP_SECONDS, self.cfg.observation_timeout):
            self._hold.clear()  # gone longer than a missed detection or two: holding starts over
        if self.stage in ("idle", "done"):
            return
        if not self.paused and self.phase == "awaiting" and self._child_fresh():
            self._active += dt
        if timeline:
            self._timeline()
        self._check_face_lost()
        self._check_timers()

    def _timeline(self) -> None:
        if self.cfg.timeline_rate <= 0:
            return
        if self._next_timeline_t is not None and self.now < self._next_timeline_t:
            return
        self._next_timeline_t = self.now + 1.0 / self.cfg.timeline_rate
        c = self._child if self._child_fresh() else None
        fresh = self._last_obs_t is not None and self.now - self._last_obs_t <= self.cfg.observation_timeout
        in_view = self._faces_in_view if fresh else 0  # others in view tell "child left" from "camera down"
        if c is None:
            self._event("child_expression", face_id=None, expression=None, confidence=None, scores=None,
                        faces_in_view=in_view)
        else:
            scores = [c.score(label) for label in LABELS]
            self._event("child_expression", face_id=int(c.face_id), expression=c.expression,
                        confidence=float(c.confidence), scores=scores, faces_in_view=in_view)

    def _check_face_lost(self) -> None:
        if self.paused or self.phase == "waiting_for_face":
            return
        last = self._child_seen_t if self._child_seen_t is not None else self._stage_t
        if self._child_fresh() or self.now - last < self.cfg.face_lost_seconds:
            return
        self._pause("face_lost", alert=True,
                    text=f"child's face not seen for {self.now - last:.1f} s; session paused")

    def _check_timers(self) -> None:
        if self.paused:
            return
        if self._deadline is not None and self.now >= self._deadline:
            action, self._deadline, self._after_deadline = self._after_deadline, None, None
            action()
            return
        if self.phase == "awaiting":
            timeout = self.cfg.teaching_timeout if self.stage == "teaching" else self.cfg.practice_timeout
            if self._active >= timeout:
                self._on_timeout()

    # child ----------------------------------------------------------------
    def _pick_child(self, obs: Observation) -> Optional[Face]:
        faces = list(obs.faces)
        if self._child_id is not None:
            same = next((f for f in faces if int(f.face_id) == self._child_id), None)
            if same is not None:
                return same
            # keep waiting for the followed track a moment: a missed detection must not hand the
            # session to a bystander's face
            if self._child_seen_t is not None and obs.t - self._child_seen_t < self.cfg.child_reselect_seconds:
                return None
        child = select_child(faces, self.cfg.child_selection, self.cfg.child_face_id,
                             obs.image_width, obs.image_height)
        if child is not None and int(child.face_id) != self._child_id:
            previous, self._child_id = self._child_id, int(child.face_id)
            if self.stage not in ("idle", "done"):
                self._event("child_selected", face_id=self._child_id, previous=previous,
                            mode=self.cfg.child_selection, faces=len(faces))
        return child

    def _on_child(self, t: float, child: Optional[Face]) -> None:
        if self.stage in ("idle", "done"):
            return
        # distress (only while running: a paused session is already getting attention)
        if child is not None and not self.paused:
            watched = [l for l in self.cfg.distress_labels
                       if not (l == self.target and self._imitating())]  # asked-for faces are not distress
            level = sum(child.score(l) for l in watched)
            if watched and level >= self.cfg.distress_threshold:
                if self._distress_since is None:
                    self._distress_since = t
                elif t - self._distress_since >= self.cfg.distress_seconds:
                    self._distress_since = None
                    self._pause("distress", alert=True,
                                text=f"child shows {'/'.join(watched)} (level {level:.2f} >= "
                                     f"{self.cfg.distress_threshold}) for {self.cfg.distress_seconds:g} s; "
                                     "session paused, therapist please check")
                    return
            else:
                self._distress_since = None
        else:
            self._distress_since = None
        if self.paused:
            if (self.pause_reason == "face_lost" and self.cfg.auto_resume_face and child is not None
                    and t - self._child_visible_since >= self.cfg.hold_seconds):
                self._resume("face_back")
            return
        if self.phase == "waiting_for_face" and child is not None:
            self._greet()
            return
        if self.phase != "awaiting":
            self._hold.clear()
            return
        if child is None:  # a missed detection does not break a hold; a longer absence does (_advance)
            return
        if not self._imitating():
            return
        # hold timers: per label, reset when the label drops out or under the threshold
        label = child.expression if child.confidence >= self.cfg.confidence_threshold else None
        self._hold = {label: self._hold.get(label, t)} if label else {}
        self._max_target = max(self._max_target, child.score(self.target))
        if label is None or t - self._hold[label] < self.cfg.hold_seconds:
            return
        if label == self.target:
            if self.stage == "teaching":
                self._end_trial("success", response=label)
                self._say("teach_success", emotion=self.target)
                self._feedback_then(self._next_trial)
            else:
                self._event("answer", answer=label, source="face")
                self._practice_answer(label)
        elif self.stage == "practice" and label != "neutral":
            self._held_other = label  # judged at timeout: the child may still get it

    def _imitating(self) -> bool:
        return self.stage == "teaching" or (self.stage == "practice" and self.cfg.practice_answer_mode == "imitation")

    # stages ----------------------------------------------------------------
    def _enter_stage(self, stage: str) -> None:
        self.stage = stage
        self._stage_t = self.now
        self.trial_idx, self.attempt, self.target = 0, 0, None
        self._deadline = self._after_deadline = None
        self._event("stage", stage=stage)
        if stage == "introduction":
            self.phase = "waiting_for_face"
            if self._child_fresh():
                self._greet()
        elif stage in ("teaching", "practice"):
            if not self.plan[stage]:
                self._event("stage_skipped", reason="no trials configured")
                if stage == "teaching":
                    self._enter_stage("practice")
                else:
                    self._end_session("completed")
                return
            self._say(f"{stage}_intro")
            self._feedback_then(self._start_trial)

    def _greet(self) -> None:
        self.phase = "free_play"
        self._show("happy")
        self._say("greet")
        self._deadline = self._base_now() + self.cfg.intro_seconds
        self._after_deadline = lambda: self._enter_stage("teaching")

    def _feedback_then(self, action) -> None:
        self.phase = "feedback"
        self._deadline, self._after_deadline = self._base_now() + self.cfg.feedback_seconds, action

    def _base_now(self) -> float:
        """Start of timers set while paused = the pause start (resume adds the paused time)."""
        return self._paused_at if self.paused and self._paused_at is not None else self.now

    def _start_trial(self, retry: bool = False) -> None:
        self.target = self.plan[self.stage][self.trial_idx]
        if self.paused:  # skipped while paused: prompt when the therapist resumes
            self.phase = "pending"
            return
        self.phase = "awaiting"
        self._active = 0.0
        self._prompt_t = self._t()
        self._hold.clear()
        self._held_other = None
        if not retry:
            self.attempt = 1
            self._trial_start_t = self._t()
            self._max_target = 0.0
            self._event("trial_start", emotion=self.target)
        self._show(self.target)
        if self.stage == "teaching":
            self._say("teach_retry" if retry else "teach_prompt", emotion=self.target)
        else:
            self._say(f"practice_prompt_{self.cfg.practice_answer_mode}")
        self._event("prompt", emotion=self.target, attempt=self.attempt)

    def _end_trial(self, outcome: str, response: str = "") -> None:
        self.last_outcome = outcome
        row = {"emotion": self.target, "attempts": self.attempt, "outcome": outcome, "answer": response,
               "response_time_s": round(self._t() - self._prompt_t, 3) if outcome in ("success", "right", "wrong")
               else None,
               "start_t": self._trial_start_t, "end_t": self._t(),
               "max_target_confidence": round(self._max_target, 4) if self._imitating() else None}
        self.trials.append({"stage": self.stage, "trial": self.trial_idx + 1, **row})
        self._event("trial_end", **row)
        self.phase = "feedback"
        self._hold.clear()

    def _next_trial(self) -> None:
        self.trial_idx += 1
        if self.trial_idx < len(self.plan[self.stage]):
            self._start_trial()
        else:
            if self.stage == "teaching":
                self._enter_stage("practice")
            else:
                self._end_session("completed")

    def _on_timeout(self) -> None:
        if self.stage == "teaching":
            if self.attempt < self.cfg.teaching_attempts:
                self._event("retry", emotion=self.target, attempt=self.attempt)
                self.attempt += 1
                self._start_trial(retry=True)
                return
            self._end_trial("timeout")
            self._say("teach_timeout")
        else:
            if self._held_other:  # imitation: the child held another face the whole trial
                self.attempted += 1
                self._end_trial("wrong", response=self._held_other)
                self._say("practice_wrong", emotion=self.target)
            else:
                self._end_trial("timeout")
                self._say("practice_timeout", emotion=self.target)
        self._feedback_then(self._next_trial)

    def _practice_answer(self, label: str) -> None:
        self.attempted += 1
        right = label == self.target
        if right:
            self.correct += 1
        self._end_trial("right" if right else "wrong", response=label)
        self._say("practice_right" if right else "practice_wrong", emotion=self.target)
        self._feedback_then(self._next_trial)

    def _skip(self) -> str:
        if self.stage == "introduction":
            self._enter_stage("teaching")
            return "introduction ended by the therapist"
        if self.phase in ("awaiting", "pending"):
            skipped = self.target
            self._end_trial("skipped")
            self._next_trial()
            return f"trial {skipped} skipped"
        if self._deadline is not None:  # feedback/transition: go on now
            action, self._deadline, self._after_deadline = self._after_deadline, None, None
            action()
            return "moved on"
        return "nothing to skip"

    def _pause(self, reason: str, alert: bool, text: str = "") -> None:
        was_paused = self.paused
        self.paused, self.pause_reason = True, reason
        if not was_paused:
            self._paused_at = self.now
        self._distress_since = None
        self._hold.clear()
        self._event("pause", reason=reason, text=text)
        if alert:
            self._alert(reason, text)
        if reason == "distress":
            self._show("neutral")
            self._say("distress")
        elif reason == "face_lost":
            self._say("face_lost")

    def _resume(self, by: str) -> None:
        paused_for = self.now - (self._paused_at or self.now)
        self.paused, self.pause_reason, self._paused_at = False, "", None
        if self._deadline is not None:  # free play / feedback keep the time they had left
            self._deadline += paused_for
        self._event("resume", by=by, paused_seconds=round(paused_for, 3))
        if self._child_seen_t is None or not self._child_fresh():
            self._child_seen_t = self.now  # give the child face_lost_seconds again
        if self.phase in ("awaiting", "pending"):
            self._say("resume")
            self._start_trial(retry=self.phase == "awaiting")  # ask again from the start
        elif self.phase == "free_play":
            self._say("resume")

    def _end_session(self, reason: str) -> None:
        if self.phase in ("awaiting", "pending") and self.stage in ("teaching", "practice"):
            self._end_trial("stopped")
        if reason == "completed":
            self._show("happy")
            self._say("goodbye")
        elif reason == "therapist":
            self._say("stopped")
        self.stage, self.phase, self.target = "done", "done", None
        self.paused, self.pause_reason = False, ""
        self._deadline = self._after_deadline = None
        self._event("stage", stage="done")
        self._event("session_end", reason=reason, correct=self.correct, attempted=self.attempted,
                    trials=len(self.trials))
        if self.log is not None:
            try:
                self.reports = self.log.finish()
            except Exception as exc:  # the events file is already complete; reports can be rebuilt
                self.reports = {"error": f"{type(exc).__name__}: {exc}"}

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

import random
from typing import Callable, Optional

from fer_ros import LABELS
from fer_ros.therapy.child import ChildWatch
# The session's vocabulary, importable from here as before the split.
from fer_ros.therapy.config import (ANSWER_ALIASES, DEFAULT_PHRASES, STAGES, VERBS, TherapyConfig,  # noqa: F401
                                    clip_text, normalize_answer, plan_trials)
from fer_ros.therapy.observations import Face, Observation, Output, State, select_child  # noqa: F401

#: A held expression survives gaps without the child's face up to this long (missed detections,
#: about 6% of frames with Haar on a moving face); longer gaps start the hold over.
HOLD_GAP_SECONDS = 0.5


class TherapySession(ChildWatch):
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
        self.events = []
        self.session_id = getattr(self.log, "session_id", "") or ""
        seed = self.cfg.seed if self.cfg.seed >= 0 else random.SystemRandom().randrange(2 ** 31)
        rng = random.Random(seed)
        self.plan = {
            "teaching": plan_trials(self.cfg.emotions, self.cfg.teaching_trials_per_emotion, self.cfg.order, rng),
            "practice": plan_trials(self.cfg.emotions, self.cfg.practice_trials_per_emotion, self.cfg.order, rng),
        }
        self._event("session_start", session_id=self.session_id, seed=seed, config=self.cfg.to_dict(),
                    plan=self.plan)
        if self._log_error is not None:  # e.g. the disk is full: refuse rather than run unrecorded
            error = self._log_error
            discard = getattr(log, "discard", None)
            if discard is not None:
                discard()
            self._reset()
            return self._finish_call(False, f"cannot write the session log: {error}; free space in the log "
                                            "folder, then start again")
        self._enter_stage("introduction")
        return self._finish_call(True, f"session {self.session_id or ''} started".replace("  ", " "))

    def command(self, verb: str, t: float) -> tuple[bool, str]:
        """Therapist control: start, pause, resume, skip (also 'next'), stop. Returns (ok, message)."""
        verb = str(verb).strip().lower()
        verb = {"next": "skip", "advance": "skip", "continue": "resume"}.get(verb, verb)
        if verb not in VERBS:
            return False, f"unknown command {clip_text(verb)!r}; use one of {', '.join(VERBS)}"
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
            shown = clip_text(text)  # a topic can carry megabytes: logs and replies get a bounded excerpt
            self._event("answer_ignored", answer=shown, reason="not an emotion label")
            return self._finish_call(False, f"{shown!r} is not an emotion; use one of {', '.join(LABELS)}")
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
            except (OSError, ValueError) as exc:  # disk full, USB stick pulled: keep scoring in memory, alert once
                if self._log_error is None:
                    self._log_error = str(exc)
                    self.outbox.append(Output("alert", f"log_error: cannot write {self.log.events_path}: {exc}"))
        if record is None:
            record = {"seq": len(self.events) + 1, "t": t, "event": kind, **fields}
        self.events.append(record)

    def _say(self, key: str, **kw) -> None:
        name = f" {self.cfg.child_name}" if self.cfg.child_name else ""
        text = self.cfg.say(key, name=name, correct=self.correct, attempted=self.attempted, **kw)
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

    def _on_child(self, t: float, child: Optional[Face]) -> None:
        if self.stage in ("idle", "done"):
            return
        if self._check_distress(t, child):
            return
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
                # after a write error the file lacks events: the reports come from the session's copy
                self.reports = self.log.finish(events=self.events if self._log_error else None)
            except Exception as exc:  # the events file is already complete; reports can be rebuilt
                self.reports = {"error": f"{type(exc).__name__}: {exc}"}

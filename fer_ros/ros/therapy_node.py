"""therapy_node: runs the therapy session (fer_ros.therapy.session) on the ROS graph.

In:  faces/expressions (fer_ros/FaceExpressionArray), therapy/answer (std_msgs/String card
     answers), therapy/command (std_msgs/String verbs, for tablets without service support),
     services therapy/{start,pause,resume,skip,stop} (std_srvs/Trigger).
Out: robot/expression and robot/say (std_msgs/String), therapy/state (fer_ros/TherapyState,
     transient local: late joiners get the current state), therapy/alert (std_msgs/String).

A thin wrapper: the session logic lives in `TherapySession`, driven here by the node clock
(ROS time, so `use_sim_time` replays work) through the callbacks and a `tick_rate` timer.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading

from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from std_msgs.msg import String
from std_srvs.srv import Trigger

from fer_ros import LABELS
from fer_ros.msg import FaceExpressionArray, TherapyState
from fer_ros.ros.params import Param, declare_params, qos_from_params, qos_params, run_node, stop_logger
from fer_ros.therapy.log import SessionLog, write_reports
from fer_ros.therapy.config import DEFAULT_PHRASES, PLACEHOLDERS, VERBS, TherapyConfig, clip_text
from fer_ros.therapy.observations import Face, Observation
from fer_ros.therapy.session import TherapySession

_D = TherapyConfig()
_labels = ", ".join(LABELS)

#: Session settings (TherapyConfig fields; emotions/trials/order/seed take effect at the next start).
SESSION_PARAMS = [
    Param("emotions", list(_D.emotions), f"Emotions taught and practised, in this order when order=fixed; "
                                         f"a subset of: {_labels}."),
    Param("teaching_trials_per_emotion", _D.teaching_trials_per_emotion,
          "Teaching trials per emotion (0 skips the teaching stage).", range=(0, 100)),
    Param("practice_trials_per_emotion", _D.practice_trials_per_emotion,
          "Practice trials per emotion (0 skips the practice stage).", range=(0, 100)),
    Param("order", _D.order, "Trial order: 'fixed' (round robin over emotions) or 'shuffled' (with seed)."),
    Param("seed", _D.seed, "Seed of the shuffled order; -1 = a new order every session (the seed is logged).",
          range=(-1, 2 ** 31 - 1)),
    Param("intro_seconds", _D.intro_seconds,
          "Free-play time of the introduction after the greeting (the therapist can skip it).",
          range=(0.0, 36000.0)),
    Param("teaching_timeout", _D.teaching_timeout,
          "Seconds the child has to imitate the emotion, per attempt (time without the child's face "
          "does not count).", range=(0.1, 3600.0)),
    Param("teaching_attempts", _D.teaching_attempts,
          "Attempts per teaching trial: after a timeout the robot encourages and asks again until "
          "this many attempts, then moves on.", range=(1, 100)),
    Param("practice_timeout", _D.practice_timeout,
          "Seconds the child has to answer a practice trial (face-visible time).", range=(0.1, 3600.0)),
    Param("feedback_seconds", _D.feedback_seconds,
          "Pause after praise/encouragement or a stage announcement before the next prompt, so the "
          "robot can finish speaking.", range=(0.0, 600.0)),
    Param("confidence_threshold", _D.confidence_threshold,
          "Minimum confidence of the child's expression for it to count as shown.", range=(0.0, 1.0)),
    Param("hold_seconds", _D.hold_seconds,
          "How long the child must keep the expression (at or above the threshold) for success; also "
          "how long the face must be back before a face-lost pause resumes.", range=(0.0, 60.0)),
    Param("child_selection", _D.child_selection,
          "Which face is the child's: 'largest', 'central' (nearest the image centre) or 'face_id' "
          "(child_face_id). The chosen track is followed while it is tracked.", ),
    Param("child_face_id", _D.child_face_id,
          "Track id of the child's face when child_selection is 'face_id' (0 = not set).", range=(0, 2 ** 31 - 1)),
    Param("child_reselect_seconds", _D.child_reselect_seconds,
          "How long a followed face may be missing before another face can be chosen as the child's.",
          range=(0.0, 60.0)),
    Param("practice_answer_mode", _D.practice_answer_mode,
          "How the child answers in practice: 'card' (on therapy/answer) or 'imitation' (the face)."),
    Param("distress_labels", list(_D.distress_labels),
          "Expressions whose summed probability measures distress (an emotion the child is being asked "
          "to imitate is left out during that trial)."),
    Param("distress_threshold", _D.distress_threshold,
          "Distress level (summed probability of distress_labels) that counts as distress.", range=(0.0, 1.0)),
    Param("distress_seconds", _D.distress_seconds,
          "Seconds of continuous distress that pause the session and raise an alert.", range=(0.1, 3600.0)),
    Param("face_lost_seconds", _D.face_lost_seconds,
          "Seconds without the child's face that pause the session and raise an alert.", range=(0.1, 3600.0)),
    Param("auto_resume_face", _D.auto_resume_face,
          "Resume a face-lost pause by itself when the child's face is back for hold_seconds "
          "(distress and therapist pauses always need therapy/resume)."),
    Param("observation_timeout", _D.observation_timeout,
          "Seconds after the last faces/expressions message at which the child's face counts as not seen "
          "(the expression node stopped or lags).", range=(0.05, 60.0)),
    Param("timeline_rate", _D.timeline_rate,
          "Rate (Hz) of the child's expression samples in the session log and timeline (0 = none).",
          range=(0.0, 100.0)),
    Param("child_name", _D.child_name, "Child's first name for the greeting (empty: no name)."),
]

#: What the robot says, translatable: phrases.<key> and the words said for each emotion.
PHRASE_PARAMS = [
    *(Param(f"phrases.{key}", text, "What the robot says here; may use "
            + ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS[key])) + ".")
      for key, text in DEFAULT_PHRASES.items()),
    *(Param(f"emotion_words.{label}", label, f"Word the robot says for {{emotion}} when it is {label}.")
      for label in LABELS),
]
_GROUPS = ("phrases", "emotion_words")

NODE_PARAMS = [
    Param("log_dir", "~/.ros/fer_ros/therapy_sessions",
          "Folder for session logs; each session writes <log_dir>/<session_id>/ events.jsonl, "
          "trials.csv, timeline.png.", read_only=True),
    Param("auto_start", False, "Start a session as soon as the node is up (otherwise call therapy/start)."),
    Param("shutdown_when_done", False, "Exit the node when the session is done (scripted runs)."),
    Param("tick_rate", 10.0, "Rate (Hz) at which timeouts and face loss are checked.", range=(1.0, 1000.0),
          read_only=True),
    *qos_params("expressions_qos", "best_effort", 1,
                "the faces/expressions subscription"),
]

PARAMS = SESSION_PARAMS + PHRASE_PARAMS + NODE_PARAMS
_SESSION_NAMES = {p.name for p in SESSION_PARAMS}


def session_settings(base: dict, params: dict) -> dict:
    """TherapyConfig values: `base` updated with the session parameters among `params`
    (`phrases.<key>` and `emotion_words.<label>` go into their dictionaries)."""
    out = {**base, **{g: dict(base.get(g) or {}) for g in _GROUPS}}
    for name, value in params.items():
        group, _, key = name.partition(".")
        if group in _GROUPS and key:
            out[group][key] = value
        elif name in _SESSION_NAMES:
            out[name] = value
    return out

#: State and robot face: keep the latest for subscribers that join late.
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def faces_from_msg(msg: FaceExpressionArray) -> list:
    return [Face(face_id=int(f.face_id), box=(f.box.x_offset, f.box.y_offset, f.box.width, f.box.height),
                 expression=f.expression, confidence=float(f.confidence), scores=[float(s) for s in f.scores])
            for f in msg.faces]


def state_to_msg(state, stamp) -> TherapyState:
    msg = TherapyState()
    msg.header.stamp = stamp
    for f in dataclasses.fields(state):
        setattr(msg, f.name, getattr(state, f.name))
    return msg


def _guarded(callback):
    """A failing callback logs the error and the node keeps running (a session must not die
    on one bad message)."""
    @functools.wraps(callback)
    def wrapper(self, *args):
        try:
            return callback(self, *args)
        except Exception as exc:  # noqa: BLE001 - reported, not swallowed silently
            self.get_logger().error(f"{callback.__name__}: {type(exc).__name__}: {exc}")
            return args[-1] if callback.__name__ == "_on_service" else None
    return wrapper


class TherapyNode(Node):
    """The session node. `clock` (callable -> seconds) replaces the node clock in tests."""

    def __init__(self, clock=None, **kwargs):
        self._lock = threading.Lock()  # callbacks may run in parallel under a multi-threaded executor
        self.session = None
        super().__init__("therapy_node", **kwargs)
        self.p = declare_params(self, PARAMS)
        self._now = clock or (lambda: self.get_clock().now().nanoseconds * 1e-9)
        self.finished = False
        self._announced = None  # session whose end was reported
        config = TherapyConfig.from_dict(session_settings({}, self.p))
        self.session = TherapySession(config, log_factory=lambda: SessionLog(self.p["log_dir"]))

        self.pub_expression = self.create_publisher(String, "robot/expression", LATCHED)
        self.pub_say = self.create_publisher(String, "robot/say", RELIABLE)
        self.pub_alert = self.create_publisher(String, "therapy/alert", RELIABLE)
        self.pub_state = self.create_publisher(TherapyState, "therapy/state", LATCHED)
        self.create_subscription(FaceExpressionArray, "faces/expressions", self._on_faces,
                                 qos_from_params(self.p, "expressions_qos"))
        self.create_subscription(String, "therapy/answer", self._on_answer, RELIABLE)
        self.create_subscription(String, "therapy/command", self._on_command_topic, RELIABLE)
        for verb in VERBS:
            self.create_service(Trigger, f"therapy/{verb}", lambda req, res, v=verb: self._on_service(v, res))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.timer = self.create_timer(1.0 / self.p["tick_rate"], self.tick)
        self._flush()
        self.get_logger().info(
            f"therapy session: emotions {config.emotions}, practice by {config.practice_answer_mode}, "
            f"logs in {self.p['log_dir']}; control with services/topic therapy/{{{','.join(VERBS)}}}")
        # auto start waits for a non-zero clock: with use_sim_time the clock reads 0 until /clock
        # arrives, and a session started at 0 would see every timer expire at the first jump
        self._pending_start = bool(self.p["auto_start"])
        self.tick()

    # -- inputs -------------------------------------------------------------------------
    @_guarded
    def _on_faces(self, msg: FaceExpressionArray) -> None:
        obs = Observation(self._now(), faces_from_msg(msg), int(msg.image_width), int(msg.image_height))
        with self._lock:
            self._flush(self.session.observe(obs))

    @_guarded
    def _on_answer(self, msg: String) -> None:
        with self._lock:
            ok, text = self.session.answer(msg.data, self._now())
            self._flush()
        self._report(ok, f"answer {clip_text(msg.data)!r}: {text}")

    @_guarded
    def _on_command_topic(self, msg: String) -> None:
        self.command(msg.data)

    @_guarded
    def _on_service(self, verb: str, response):
        response.success, response.message = self.command(verb)
        return response

    def command(self, verb: str) -> tuple:
        with self._lock:
            ok, text = self.session.command(verb, self._now())
            self._flush()
        self._report(ok, f"{clip_text(verb)}: {text}")
        return ok, text

    def _report(self, ok: bool, text: str) -> None:
        # rclpy forbids one call site logging at two severities, hence two calls
        if ok:
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    @_guarded
    def tick(self) -> None:
        if self._pending_start and self._now() > 0:
            self._pending_start = False
            self.command("start")
        with self._lock:
            self._flush(self.session.tick(self._now()))

    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params
                   if p.name in _SESSION_NAMES or p.name.partition(".")[0] in _GROUPS}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            config = TherapyConfig.from_dict(session_settings(self.session.cfg.to_dict(), changes))
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:
            self.session.reconfigure(config)
        self.get_logger().info(f"settings changed: {changes}")
        return SetParametersResult(successful=True)

    # -- outputs ------------------------------------------------------------------------
    def _flush(self, outputs=()) -> None:
        """Publish `outputs` and whatever else the session produced (called with the lock held)."""
        for out in list(outputs) + self.session.drain():
            if out.kind == "state":
                self.pub_state.publish(state_to_msg(out.value, self.get_clock().now().to_msg()))
                if out.value.stage == "done" and out.value.session_id != self._announced:
                    self._announced = out.value.session_id
                    self._on_done()
            elif out.kind == "expression":
                self.pub_expression.publish(String(data=out.value))
            elif out.kind == "say":
                self.pub_say.publish(String(data=out.value))
                self.get_logger().info(f"robot says: {out.value}")
            elif out.kind == "alert":
                self.pub_alert.publish(String(data=out.value))
                self.get_logger().warning(f"ALERT {out.value}")

    def _on_done(self) -> None:
        reports = self.session.reports
        where = ", ".join(f"{k} {v}" for k, v in reports.items()) or "no log"
        self.get_logger().info(f"session done: {self.session.correct}/{self.session.attempted} right; {where}")
        if self.p["shutdown_when_done"]:
            self.finished = True

    def destroy_node(self):
        """Ends a running session first, so its CSV and timeline get written."""
        with self._lock:
            try:
                if self.session is None:  # the constructor failed (bad parameter)
                    return super().destroy_node()
                running = self.session.stage not in ("idle", "done")
                self.session.close(self._now(), "shutdown")
                log = self.session.log
                if log is not None and self.session.stage == "done" and "timeline" not in self.session.reports:
                    # Ctrl-C arrived while the reports of a finished session were being written
                    # (or writing them failed): the events file is complete, so write them again.
                    self.session.reports = write_reports(log.events_path)
                if self.context.ok():
                    self._flush()
                else:  # Ctrl-C already shut ROS down: nothing can be published any more
                    self.session.drain()
                    if running:
                        stop_logger(self).info(f"session ended; log in {self.session.reports.get('events')}")
            except Exception as exc:  # context already shut down: the events file is complete anyway
                print(f"therapy_node: closing the session: {exc}", file=sys.stderr)
        return super().destroy_node()


def main(args=None) -> int:
    # bad configuration: say which setting
    return run_node("therapy_node", TherapyNode, (ValueError, ParameterException), args,
                    finished=lambda node: node.finished)


if __name__ == "__main__":
    sys.exit(main())

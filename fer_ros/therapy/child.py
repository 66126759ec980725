"""The child's side of a therapy session: which face is the child's, whether it is seen, the
expression timeline, and the wellbeing rules (face lost, distress) with their pauses.

A mixin of `TherapySession` (fer_ros.therapy.session), kept apart so each file stays readable;
it uses the session's state and its `_event`/`_say`/`_alert` helpers.
"""

from __future__ import annotations

from typing import Optional

from fer_ros import LABELS
from fer_ros.therapy.observations import Face, Observation, select_child


class ChildWatch:
    """Child selection, visibility and wellbeing for `TherapySession`."""

    def _followed_id(self) -> int:
        """Track id followed as the child's, kept through brief misses (no state flicker), 0 once lost."""
        if self._child_id is None or self._child_seen_t is None or self.now is None:
            return 0
        grace = max(self.cfg.child_reselect_seconds, self.cfg.observation_timeout)
        return self._child_id if self.now - self._child_seen_t <= grace else 0

    def _child_fresh(self) -> bool:
        """The child's face was in the latest observation and that observation is recent."""
        return (self._child is not None and self._last_obs_t is not None
                and self.now - self._last_obs_t <= self.cfg.observation_timeout)

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

    def _check_distress(self, t: float, child: Optional[Face]) -> bool:
        """Pause (alert) after distress_seconds of distress; True when it paused. Only while
        running: a paused session is already getting attention."""
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
                    return True
            else:
                self._distress_since = None
        else:
            self._distress_since = None
        return False

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

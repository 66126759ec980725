"""Face tracking: stable ids across frames and per-track smoothing of expression scores.

Association is greedy by box overlap (IoU, best pairs first): with the handful of faces a
therapy scene has, it gives the same answer as the Hungarian method at a fraction of the
code. A track that has not been matched for `max_age_s` seconds of stamps (or `max_age_frames`
frames when no stamps are given) is dropped; ids are never reused, so a child who leaves and
comes back gets a new id rather than someone else's history.

Scores are smoothed per track with an exponential moving average,
    s_t = smoothing * s_{t-1} + (1 - smoothing) * p_t,
so a one-frame flicker does not flip the label; smoothing=0 gives the raw per-frame scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every (x, y, w, h) row of `a` [A, >=4] and of `b` [B, >=4] -> [A, B]."""
    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.size(a) else 4)[:, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4]
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class Track:
    face_id: int
    box: np.ndarray  # (x, y, w, h) float, last matched detection
    scores: np.ndarray | None  # smoothed scores [7] (None until the first classification)
    last_seen: float  # stamp (s) of the last match, or the frame counter without stamps
    last_frame: int
    extra: dict = field(default_factory=dict)


class FaceTracker:
    """Assign stable ids to per-frame face boxes and smooth their scores.

    iou_threshold: minimum overlap for a detection to continue a track.
    max_age_s: drop a track not seen for this many seconds (when stamps are given).
    max_age_frames: the same in frames, used when `update` gets no stamp.
    smoothing: EMA weight of the past in [0, 1); 0 = off (raw scores).
    """

    def __init__(self, iou_threshold: float = 0.3, max_age_s: float = 1.0, max_age_frames: int = 30,
                 smoothing: float = 0.6):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age_s < 0 or max_age_frames < 0:
            raise ValueError("max_age_s and max_age_frames must be >= 0")
        self.iou_threshold = float(iou_threshold)
        self.max_age_s = float(max_age_s)
        self.max_age_frames = int(max_age_frames)
        self.smoothing = float(smoothing)
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame = 0
        self._last_stamp: float | None = None

    def reset(self, restart_ids: bool = False) -> None:
        """Forget all tracks. Ids keep counting up (an id is never given twice) unless
        `restart_ids`, for a new, unrelated input such as the next file of a folder."""
        self.tracks = []
        self._last_stamp = None
        if restart_ids:
            self.next_id = 1

    def _expired(self, track: Track, stamp: float | None) -> bool:
        if stamp is not None and track.extra.get("stamped", False):
            return stamp - track.last_seen > self.max_age_s
        return self.frame - track.last_frame - 1 > self.max_age_frames  # frames missed in between

    def update(self, boxes, scores=None, stamp: float | None = None):
        """Match this frame's boxes [K, >=4] (and scores [K, 7]) to tracks.

        Returns (ids [K] int, smoothed scores [K, 7] or None), in the order of `boxes`.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 4)
        k = len(boxes)
        if scores is not None:
            scores = np.asarray(scores, np.float64)
            scores = scores.reshape(k, scores.shape[-1] if scores.ndim == 2 else -1) if k else np.zeros((0, 7))
        self.frame += 1
        if stamp is not None:
            stamp = float(stamp)
            if self._last_stamp is not None and stamp < self._last_stamp - 1e-6:
                # Time went backwards (a bag restarted, a clock jump): old tracks are stale.
                log.info("stamp went back from %.3f to %.3f s: resetting face tracks", self._last_stamp, stamp)
                self.reset()
            self._last_stamp = stamp
        self.tracks = [t for t in self.tracks if not self._expired(t, stamp)]

        ids = np.zeros(k, np.int64)
        iou = iou_matrix([t.box for t in self.tracks], boxes) if self.tracks else np.zeros((0, k))
        matched_t, matched_d = set(), set()
        if iou.size:
            for flat in np.argsort(-iou, axis=None):
                ti, di = np.unravel_index(flat, iou.shape)
                if iou[ti, di] < self.iou_threshold:
                    break
                if ti in matched_t or di in matched_d:
                    continue
                matched_t.add(ti)
                matched_d.add(di)
                ids[di] = -1 - ti  # temporarily: which track

        out_scores = None if scores is None else np.empty_like(scores)
        when = stamp if stamp is not None else float(self.frame)
        for di in range(k):
            if ids[di] < 0:
                track = self.tracks[-1 - ids[di]]
                track.box = boxes[di, :4].copy()
                track.last_seen, track.last_frame = when, self.frame
            else:
                track = Track(self.next_id, boxes[di, :4].copy(), None, when, self.frame)
                self.next_id += 1
                self.tracks.append(track)
            track.extra["stamped"] = stamp is not None
            ids[di] = track.face_id
            if scores is not None:
                p = scores[di]
                if track.scores is None or self.smoothing == 0.0:
                    track.scores = p.copy()
                else:
                    track.scores = self.smoothing * track.scores + (1.0 - self.smoothing) * p
                out_scores[di] = track.scores
        return ids, out_scores


# ----------------------------------------------------- following a face the detector missed

#: Optical flow runs on a copy this many pixels wide: enough for a face's motion, and cheap.
FLOW_WIDTH = 320


def flow_image(frame) -> tuple[np.ndarray, float]:
    """(gray copy at most FLOW_WIDTH wide, factor from its pixels to the frame's) for box_motion."""
    import cv2

    from .preprocess import to_gray

    gray = to_gray(np.asarray(frame))
    if gray.shape[1] <= FLOW_WIDTH:
        return gray.copy(), 1.0  # copy: the caller may reuse the frame's buffer
    f = FLOW_WIDTH / gray.shape[1]
    small = cv2.resize(gray, (FLOW_WIDTH, max(1, round(gray.shape[0] * f))), interpolation=cv2.INTER_AREA)
    return small, 1.0 / f


def box_motion(prev: np.ndarray, cur: np.ndarray, box, factor: float = 1.0) -> np.ndarray | None:
    """How the content of `box` (x, y, w, h, frame pixels) moved from `prev` to `cur` (flow_image
    copies of two consecutive frames, `factor` their scale): the median Lucas-Kanade displacement
    (dx, dy) of corner features inside the box, in frame pixels; None when the box has too few
    features that could be followed (a flat patch, the box outside the image)."""
    import cv2

    if prev.shape != cur.shape:
        return None
    x, y, w, h = (float(v) / factor for v in np.asarray(box, np.float64)[:4])
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(prev.shape[1], int(np.ceil(x + w))), min(prev.shape[0], int(np.ceil(y + h)))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    pts = cv2.goodFeaturesToTrack(prev[y0:y1, x0:x1], maxCorners=40, qualityLevel=0.01, minDistance=3)
    if pts is None or len(pts) < 4:
        return None
    pts = (pts.reshape(-1, 2) + [x0, y0]).astype(np.float32)
    nxt, ok, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts, None, winSize=(15, 15), maxLevel=2)
    # Forward-backward check: a point is trusted only if following it back lands where it
    # started; when the face is covered by something flat, its features "move" anywhere.
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(cur, prev, nxt, None, winSize=(15, 15), maxLevel=2)
    ok = ok.reshape(-1).astype(bool) & ok_back.reshape(-1).astype(bool)
    ok &= np.linalg.norm(back - pts, axis=1) < 1.0
    if ok.sum() < max(4, len(pts) // 3):
        return None
    d = np.median(nxt[ok] - pts[ok], axis=0).astype(np.float64)
    if np.abs(d).max() > 0.5 * max(w, h):  # no face moves half its size in one frame
        return None
    return d * factor

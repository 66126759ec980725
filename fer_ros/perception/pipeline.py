"""The real-time pipeline: detect faces -> 48x48 crops -> one batched classification -> track.

    from fer_ros.perception.pipeline import ExpressionPipeline
    pipe = ExpressionPipeline()             # default detector, shipped model, tracking on
    for r in pipe.process(bgr, stamp=t):    # list[FaceResult]
        print(r.face_id, r.box, r.expression, r.confidence)
    pipe.last_timings                       # ms: detect, classify, track, total

ROS-free: the expression node wraps it.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import numpy as np

from fer_ros import LABELS
from .classifier import ExpressionClassifier
from .detectors import make_detector
from .preprocess import Framing, crop_faces, framing_for
from .tracking import FaceTracker, box_motion, flow_image, iou_matrix

log = logging.getLogger(__name__)

@dataclass
class FaceResult:
    face_id: int  # >= 1; stable across frames when tracking is on
    box: tuple  # (x, y, w, h) ints, pixels of the input frame
    expression: str  # a LABELS entry: argmax of `scores`
    confidence: float  # scores[argmax]
    scores: np.ndarray  # [7] float32 in LABELS order (smoothed when smoothing is on)
    detection_score: float

    def to_dict(self) -> dict:
        return {
            "face_id": int(self.face_id),
            "box": [int(v) for v in self.box],
            "expression": self.expression,
            "confidence": round(float(self.confidence), 4),
            "scores": {label: round(float(s), 4) for label, s in zip(LABELS, self.scores)},
            "detection_score": round(float(self.detection_score), 4),
        }


def stamp_seconds(stamp) -> float | None:
    """None, seconds (float/int) or a ROS Time-like object (sec, nanosec) -> float seconds."""
    if stamp is None:
        return None
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return float(stamp.sec) + 1e-9 * float(stamp.nanosec)
    if hasattr(stamp, "nanoseconds"):  # rclpy.time.Time
        return 1e-9 * float(stamp.nanoseconds)
    return float(stamp)


class ExpressionPipeline:
    """Faces and expressions in BGR (or gray/BGRA) frames.

    detector: a name for `make_detector` ("default", "haar", "yunet", "mtcnn", "whole") or an object
        with `detect(frame) -> [K, 5]`; detector_params go to `make_detector`.
    classifier: an ExpressionClassifier (default: the shipped model, backend "auto"); or
        give model_path/backend to build one.
    tracking: stable ids and smoothing; off gives per-frame ids 1..K and raw scores.
    smoothing: EMA weight of the past for the scores (0 = raw).
    framing: how a detector box maps to the FER-2013-style square crop the model was trained
        on (`preprocess.Framing`; None: the one measured for the detector, `FRAMINGS`).
    max_faces: keep the largest faces up to this many (None: all).
    min_face_size: ignore faces smaller than this (pixels, shorter side).
    iou_threshold, max_age_s, max_age_frames: tracker parameters (see FaceTracker).
    detect_interval: scan the whole frame every N frames; in between, re-detect faces only
        around the previous frame's faces (detectors with `detect_near`: MTCNN, Haar), which
        is much cheaper. A face that is lost between scans triggers a full scan on the next
        frame. While no face is known the whole frame is scanned every EMPTY_SCAN_INTERVAL
        frames (at most), so a child who walks in is found a frame late at most; a second face
        joining a known one appears at most N-1 frames late. 1 = full scan on every frame.
    async_scan: run those periodic full scans in a background thread (on a clone of the
        detector) instead of inside `process`, so no frame pays for a whole scan: known faces
        are followed every frame, new ones join when their scan finishes (a frame or two
        later). Results then depend on timing, so it is off by default (reproducible runs).
    hold_frames: bridge short detection gaps (0 = off, else >= 1 frames). A face seen in at
        least HOLD_MIN_SEEN frames in a row that the detector misses (turned away, a hand over
        the mouth, motion blur) is first searched for again around its last box at a lower
        threshold and with the profile cascade (detectors whose `detect_near` takes them);
        if that fails too, its last box is kept for up to this many frames, so its track and
        id go on and the therapy node does not see the face as lost. A real departure shows
        up hold_frames frames late.
    """

    #: Between frames further apart than this (s), faces may have moved anywhere: full scan.
    MAX_GAP_S = 0.5
    #: Full-scan interval while no face is known: nothing else costs time then, and the first
    #: frames of a child coming into view are the ones a session must not miss.
    EMPTY_SCAN_INTERVAL = 2
    #: Only faces found in this many consecutive frames are held through a miss, so a one-frame
    #: false alarm is not stretched into several.
    HOLD_MIN_SEEN = 3
    #: min_neighbors of the re-detection around a just-lost face (the full scan uses 5).
    RESCUE_NEIGHBORS = 2

    def __init__(self, detector="default", classifier: ExpressionClassifier | None = None,
                 tracking: bool = True, smoothing: float = 0.6, framing: Framing | None = None,
                 max_faces: int | None = 20, min_face_size: int = 30, iou_threshold: float = 0.3,
                 max_age_s: float = 1.0, max_age_frames: int = 30, detector_params: dict | None = None,
                 model_path=None, backend: str = "auto", detect_interval: int = 5, async_scan: bool = False,
                 hold_frames: int = 8):
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be >= 1, got {min_face_size}")
        if isinstance(detector, str):
            params = dict(detector_params or {})
            if detector.lower() in ("default", "haar", "yunet", "mtcnn"):
                params.setdefault("min_size", int(min_face_size))
            detector = make_detector(detector, **params)
        elif not callable(getattr(detector, "detect", None)):
            raise TypeError("detector must be a name or an object with a detect(frame) method")
        self.detector = detector
        self.classifier = classifier or ExpressionClassifier(model_path, backend=backend)
        self.framing = framing or framing_for(getattr(detector, "name", None))
        if not self.framing.scale > 0:
            raise ValueError(f"the crop framing's scale must be > 0, got {self.framing.scale}")
        if detect_interval < 1:
            raise ValueError(f"detect_interval must be >= 1, got {detect_interval}")
        self.detect_interval = int(detect_interval)
        if hold_frames < 0:
            raise ValueError(f"hold_frames must be >= 0, got {hold_frames}")
        self.hold_frames = int(hold_frames)
        # A second, looser re-detection only helps when detect_near takes those options (Haar).
        near = getattr(detector, "detect_near", None)
        try:
            self._can_rescue = near is not None and {"min_neighbors", "profile"} <= set(inspect.signature(near).parameters)
        except (TypeError, ValueError):
            self._can_rescue = False
        # Per row of _last_boxes: frames found in a row, and frames held since last found.
        self._seen = np.zeros(0, np.int64)
        self._missed = np.zeros(0, np.int64)
        self._prev_flow = None  # flow_image of the previous frame while faces are in view
        self._since_scan: int | None = None  # frames since the last full scan (None: scan now)
        self._last_boxes = np.zeros((0, 5), np.float32)
        self._last_shape = None
        self._prev_shape = None
        self._last_stamp: float | None = None
        # Background scans: a clone of the detector (its own cascade) and one pending future.
        self.async_scan = bool(async_scan) and callable(getattr(detector, "clone", None))
        self._scanner = detector.clone() if self.async_scan else None
        self._executor = None
        self._pending = None
        self.max_faces = max_faces
        self.min_face_size = int(min_face_size)
        self.tracker = FaceTracker(iou_threshold, max_age_s, max_age_frames, smoothing) if tracking else None
        self.last_timings = {"detect": 0.0, "classify": 0.0, "track": 0.0, "total": 0.0}
        self.frames = 0

    @property
    def tracking(self) -> bool:
        return self.tracker is not None

    def reset(self, restart_ids: bool = False) -> None:
        """Forget tracks (e.g. a new video); face ids keep counting up unless `restart_ids`."""
        if self.tracker:
            self.tracker.reset(restart_ids)
        self._since_scan = None
        self._last_boxes = np.zeros((0, 5), np.float32)
        self._seen, self._missed = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._prev_flow = None
        self._pending = None  # a scan of the old scene still running is ignored

    def close(self) -> None:
        """Stop the background scan thread (async_scan); the pipeline still works afterwards."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor, self._pending = None, None

    def _submit_scan(self, frame) -> None:
        if self._pending is None:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fer_scan")
            # copy: the caller may reuse the frame's buffer (ROS messages, camera drivers)
            self._pending = self._executor.submit(self._scanner.detect, np.array(frame, copy=True))

    def _collect_scan(self, boxes: np.ndarray) -> np.ndarray:
        """Add the faces a finished background scan found that nobody is following yet."""
        if self._pending is None or not self._pending.done():
            return boxes
        future, self._pending = self._pending, None
        try:
            found = self.select(np.asarray(future.result(), np.float32).reshape(-1, 5))
        except Exception as exc:  # noqa: BLE001 - a failed background scan must not stop the stream
            log.warning("background face scan failed: %s", exc)
            return boxes
        if len(boxes):
            found = found[iou_matrix(found, boxes).max(axis=1) < 0.3] if len(found) else found
        return self.select(np.concatenate([boxes, found])) if len(found) else boxes

    def detect(self, frame, stamp: float | None = None) -> np.ndarray:
        """Full scan every `detect_interval` frames (or after a face was lost, a change of frame
        size, or a gap of more than MAX_GAP_S between stamps), else re-detect near the previous
        faces; then bridge short misses (`hold_frames`). Returns the selected boxes [K, 5]."""
        near = getattr(self.detector, "detect_near", None)
        shape = np.shape(frame)[:2]
        gap = (stamp is not None and self._last_stamp is not None
               and not 0.0 <= stamp - self._last_stamp <= self.MAX_GAP_S)
        scan = (near is None or self.detect_interval == 1 or self._since_scan is None
                or self._since_scan + 1 >= (self.detect_interval if len(self._last_boxes)
                                            else min(self.detect_interval, self.EMPTY_SCAN_INTERVAL))
                or shape != self._last_shape or gap)
        background = scan and self.async_scan and shape == self._last_shape and not gap
        self._prev_shape = self._last_shape
        self._last_shape, self._last_stamp = shape, stamp
        if scan and not background:
            self._pending = None
            boxes = self.select(np.asarray(self.detector.detect(frame), np.float32).reshape(-1, 5))
            self._since_scan = 0
        else:
            if background:
                self._submit_scan(frame)
                self._since_scan = 0
            else:
                self._since_scan += 1
            boxes = np.zeros((0, 5), np.float32)
            if len(self._last_boxes):
                boxes = self.select(np.asarray(near(frame, self._last_boxes), np.float32).reshape(-1, 5))
            if len(boxes) < len(self._last_boxes):
                self._since_scan = None  # someone was lost (moved fast, turned, left): scan next frame
            if self.async_scan:
                boxes = self._collect_scan(boxes)
        fresh = gap or shape != self._prev_shape
        # Gray copy for optical flow, only while someone is in view (held boxes follow it).
        cur = flow_image(frame) if self.hold_frames and (len(boxes) or len(self._last_boxes)) else None
        boxes = self._bridge(frame, boxes, fresh, cur)
        self._last_boxes, self._prev_flow = boxes, (cur if len(boxes) else None)
        return boxes

    def _bridge(self, frame, boxes: np.ndarray, fresh: bool, cur=None) -> np.ndarray:
        """Keep faces of the previous frame that this frame's detection missed (see hold_frames):
        re-detect them nearby at a lower threshold, else hold their last box, moved by the
        optical flow inside it from the previous frame (`cur`: this frame's flow_image)."""
        last, k = self._last_boxes, len(boxes)
        seen, missed = np.ones(k, np.int64), np.zeros(k, np.int64)
        if fresh or self.hold_frames == 0 or len(last) == 0 or len(self._seen) != len(last):
            self._seen, self._missed = seen, missed
            return boxes
        iou = iou_matrix(last, boxes) if k else np.zeros((len(last), 0))
        if k:
            best = iou.argmax(axis=0)
            cont = iou[best, np.arange(k)] >= 0.2
            seen[cont] = self._seen[best[cont]] + 1
        lost = [i for i in range(len(last)) if (not k or iou[i].max() < 0.2)
                and self._seen[i] >= self.HOLD_MIN_SEEN and self._missed[i] < self.hold_frames]
        if not lost:
            self._seen, self._missed = seen, missed
            return boxes
        rescued = np.zeros((0, 5), np.float32)
        if self._can_rescue:
            rescued = self.detector.detect_near(frame, last[lost], min_neighbors=self.RESCUE_NEIGHBORS, profile=True)
            rescued = self.select(np.asarray(rescued, np.float32).reshape(-1, 5))
        add, add_seen, add_missed = [], [], []
        for i in lost:
            row, again = last[i].copy(), False
            if len(rescued):
                overlap = iou_matrix(last[i:i + 1], rescued)[0]
                if overlap.max() >= 0.2:
                    row, again = rescued[int(overlap.argmax())], True
            if not again and cur is not None and self._prev_flow is not None:
                d = box_motion(self._prev_flow[0], cur[0], row[:4], cur[1])
                if d is not None:  # follow the face; the box stays inside the frame
                    height, width = np.shape(frame)[:2]
                    row[0] = np.clip(row[0] + d[0], 0, max(0.0, width - row[2]))
                    row[1] = np.clip(row[1] + d[1], 0, max(0.0, height - row[3]))
            if k and iou_matrix(row[None], boxes).max() >= 0.3:
                continue  # already there under another box
            # A rescue does not reset `missed`: only a detection at the full threshold does, so a
            # weak match on background where a face was cannot keep a box alive for ever.
            add.append(row)
            add_seen.append(self._seen[i])
            add_missed.append(self._missed[i] + 1)
        if add:
            boxes = np.concatenate([boxes, np.asarray(add, np.float32)])
            seen = np.concatenate([seen, add_seen])
            missed = np.concatenate([missed, add_missed])
            order = np.argsort(boxes[:, 0], kind="stable")  # left to right, as select returns them
            boxes, seen, missed = boxes[order], seen[order], missed[order]
        self._seen, self._missed = seen, missed
        return boxes

    def select(self, boxes: np.ndarray) -> np.ndarray:
        """Drop too-small faces, keep the `max_faces` largest, return them left to right."""
        if len(boxes) == 0:
            return boxes
        boxes = boxes[np.minimum(boxes[:, 2], boxes[:, 3]) >= self.min_face_size]
        if self.max_faces is not None and len(boxes) > self.max_faces:
            boxes = boxes[np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")[: self.max_faces]]
        return boxes[np.argsort(boxes[:, 0], kind="stable")]

    def process(self, frame, stamp=None) -> list[FaceResult]:
        """Faces and expressions in one frame. `stamp`: seconds or a ROS Time (for tracking)."""
        if frame is None:
            raise ValueError("empty frame: got None (camera not ready or file not readable?)")
        frame = np.asarray(frame)
        if frame.size == 0 or frame.ndim not in (2, 3):
            raise ValueError(f"empty or malformed frame of shape {frame.shape}: expected HxW, HxWx3 or HxWx4 uint8")
        t0 = time.perf_counter()
        stamp = stamp_seconds(stamp)
        boxes = self.detect(frame, stamp).copy()
        boxes[:, :4] = np.round(boxes[:, :4])  # the reported integer box is exactly what is cropped
        t1 = time.perf_counter()
        faces = crop_faces(frame, boxes[:, :4], self.framing)
        probs = self.classifier.predict(faces)
        t2 = time.perf_counter()
        if self.tracker is not None:
            ids, scores = self.tracker.update(boxes[:, :4], probs, stamp)
            scores = scores.astype(np.float32)
        else:
            ids, scores = np.arange(1, len(boxes) + 1), probs
        t3 = time.perf_counter()
        results = []
        for i in range(len(boxes)):
            s = scores[i]
            k = int(np.argmax(s))
            x, y, w, h = (int(round(float(v))) for v in boxes[i, :4])
            results.append(FaceResult(int(ids[i]), (x, y, w, h), LABELS[k], float(s[k]), s.copy(),
                                      float(boxes[i, 4])))
        self.frames += 1
        self.last_timings = {"detect": (t1 - t0) * 1e3, "classify": (t2 - t1) * 1e3,
                             "track": (t3 - t2) * 1e3, "total": (time.perf_counter() - t0) * 1e3,
                             "faces": len(results)}
        return results

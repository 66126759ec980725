"""Face detectors behind one interface: `detect(bgr) -> float32 [K, 5]` rows (x, y, w, h, score).

Boxes are in pixels of the frame that was passed in, whatever resolution the detector
works at internally. Every detector accepts gray, BGR and BGRA uint8 frames.

- `haar`: the paper's Viola-Jones detector (OpenCV's bundled frontal-face cascade), with an
  option to run on a downscaled frame, which is what makes it real-time.
- `yunet`: OpenCV's CNN detector `cv2.FaceDetectorYN`; the user gives the .onnx path.
- `mtcnn`: MTCNN in torch with the weights of the PyPI package `mtcnn` (`pip install mtcnn`);
  finds partly covered and turned faces Haar misses; between full scans it follows known faces
  with R-Net and O-Net only (`detect_near`), which costs less than Haar's re-detection. Its
  networks run on one torch thread (`threads`), leaving the other cores to the classifier.
- `whole`: the whole frame is one face, for inputs that are already face crops (FER-2013).
- `default`: MTCNN on a frame downscaled to 320 px wide (see docs/core.md for the measurement
  that chose it, bench/bench_detectors.py); Haar, with a warning, where torch or the `mtcnn`
  package is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .preprocess import to_gray

EMPTY = np.zeros((0, 5), np.float32)


def _check_frame(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.size == 0 or frame.ndim < 2 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"empty frame (shape {frame.shape}): nothing to detect faces in")
    return frame


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    """uint8 gray/BGR/BGRA -> contiguous BGR (YuNet needs 3 channels)."""
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return np.ascontiguousarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"unsupported frame shape {frame.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")


def _xywh(boxes) -> np.ndarray:
    """[K, >=4] boxes (x, y, w, h[, score]; K may be 0) as float64 [K, 4]."""
    return np.asarray(boxes, np.float64).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 4)[:, :4]


def _downscale(image: np.ndarray, width: int | None):
    """Shrink `image` to `width` px wide (never enlarge); return (image, factor to map back)."""
    w = image.shape[1]
    if not width or w <= width:
        return image, 1.0
    f = width / float(w)
    h = max(1, int(round(image.shape[0] * f)))
    return cv2.resize(image, (int(width), h), interpolation=cv2.INTER_AREA), w / float(width)


class HaarDetector:
    """Viola-Jones detector (OpenCV's `haarcascade_frontalface_default.xml` by default).

    Parameters:
        scale_factor, min_neighbors: as in `CascadeClassifier.detectMultiScale` (the paper:
            1.1 and 5).
        min_size: smallest face side in pixels of the *input* frame (smaller faces are too
            small for a 48x48 crop to carry an expression anyway).
        max_size: largest face side in input pixels (None: no limit).
        downscale_width: detect on a copy resized to this width (None or 0: full resolution).
            Haar's cost grows with the pixel count: 320 px is several times cheaper than
            640 px (bench/bench_pipeline.py) and has fewer false alarms on fine texture.
        equalize: histogram-equalise before detecting (helps in dim, low-contrast rooms).
        cascade: path of another cascade XML.
        profile: also run OpenCV's profile-face cascade, on the frame and on its mirror image
            (the cascade only knows faces turned one way), and merge the boxes. It finds some
            half-turned faces the frontal cascade misses but triples the cost of a full scan;
            `detect_near(..., profile=True)` uses it only around a face that was just lost.

    Score: neighbours / (neighbours + min_neighbors), in (0, 1); 0.5 is a just-accepted face.
    """

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 30,
                 max_size: int | None = None, downscale_width: int | None = 320,
                 equalize: bool = False, cascade: str | os.PathLike | None = None, profile: bool = False):
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if min_neighbors < 0:
            raise ValueError(f"min_neighbors must be >= 0, got {min_neighbors}")
        path = Path(cascade) if cascade else Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        if not path.is_file():
            raise FileNotFoundError(f"Haar cascade not found: {path}")
        try:
            self.cascade = cv2.CascadeClassifier(str(path))
            ok = not self.cascade.empty()
        except (cv2.error, SystemError):  # OpenCV raises on malformed XML
            ok = False
        if not ok:
            raise ValueError(f"could not load the Haar cascade {path} (not a cascade XML?)")
        self.cascade_path = str(path)
        # The profile cascade ships with opencv-python; loaded always so that detect_near can
        # fall back on it around a lost face even when profile=False.
        self.profile_cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_profileface.xml"))
        if self.profile_cascade.empty():
            self.profile_cascade = None
        self.profile = bool(profile) and self.profile_cascade is not None
        self._params = dict(scale_factor=scale_factor, min_neighbors=min_neighbors, min_size=min_size,
                            max_size=max_size, downscale_width=downscale_width, equalize=equalize, cascade=cascade,
                            profile=profile)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.max_size = int(max_size) if max_size else None
        self.downscale_width = int(downscale_width) if downscale_width else None
        self.equalize = bool(equalize)

    def clone(self) -> "HaarDetector":
        """An independent copy (its own CascadeClassifier) for use from another thread:
        OpenCV does not promise that one cascade object can run two detections at once."""
        return HaarDetector(**self._params)

    def detect(self, frame) -> np.ndarray:
        gray = to_gray(_check_frame(frame))
        small, f = _downscale(gray, self.downscale_width)
        if self.equalize:
            small = cv2.equalizeHist(small)
        # The cascade's own window is 24x24; asking for less only costs time.
        min_side = max(24, int(round(self.min_size / f)))
        max_side = int(round(self.max_size / f)) if self.max_size else 0
        if min(small.shape[:2]) < min_side:
            return EMPTY.copy()
        boxes, neighbours = self._scan(small, self.min_neighbors, (min_side, min_side),
                                       (max_side, max_side) if max_side else (0, 0), self.profile)
        if len(boxes) == 0:
            return EMPTY.copy()
        out = self._rows(boxes, neighbours, f, 0, 0)
        return nms(out, 0.3) if self.profile else out

    def _scan(self, gray: np.ndarray, min_neighbors: int, min_side, max_side, profile: bool):
        """Frontal cascade, plus the profile cascade on the image and its mirror when `profile`:
        (boxes [N, 4], neighbours [N]) in the pixels of `gray`."""
        boxes, neighbours = self.cascade.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=min_neighbors, minSize=min_side, maxSize=max_side)
        if not profile or self.profile_cascade is None:
            return boxes, neighbours
        all_boxes = [np.asarray(boxes, np.float32).reshape(-1, 4)]
        all_n = [np.asarray(neighbours, np.float32).reshape(-1)]
        width = gray.shape[1]
        for mirrored in (False, True):
            img = cv2.flip(gray, 1) if mirrored else gray
            b, n = self.profile_cascade.detectMultiScale2(
                img, scaleFactor=self.scale_factor, minNeighbors=min_neighbors, minSize=min_side, maxSize=max_side)
            b = np.asarray(b, np.float32).reshape(-1, 4)
            if mirrored and len(b):
                b[:, 0] = width - b[:, 0] - b[:, 2]
            all_boxes.append(b)
            all_n.append(np.asarray(n, np.float32).reshape(-1))
        return np.concatenate(all_boxes), np.concatenate(all_n)

    def _rows(self, boxes, neighbours, f: float, x0: int, y0: int, min_neighbors: int | None = None) -> np.ndarray:
        out = np.empty((len(boxes), 5), np.float32)
        out[:, :4] = np.asarray(boxes, np.float32) * f
        out[:, 0] += x0
        out[:, 1] += y0
        n = np.asarray(neighbours, np.float32).reshape(-1)
        out[:, 4] = n / (n + max(self.min_neighbors if min_neighbors is None else min_neighbors, 1))
        return out

    def detect_near(self, frame, boxes, grow: float = 0.35, face_px: int = 32,
                    size_range: float = 1.25, min_neighbors: int | None = None,
                    profile: bool | None = None) -> np.ndarray:
        """Re-detect faces only around known boxes [K, >=4] (the faces of the previous frame).

        Each box is widened by `grow` of its size per side and shrunk so the face is about
        `face_px` pixels, then searched for faces between 1/size_range and size_range times
        its size. That is a few hundred windows instead of the whole frame's pyramid (about a
        tenth of a full scan for 4 faces, measured), which is what lets the pipeline run Haar
        in real time between full scans. Faces move little between two frames at 15-30 fps.

        min_neighbors, profile: override the detector's own (None: keep them), e.g. a lower
        threshold and the profile cascade to find a face again that just turned or was covered:
        a false alarm is unlikely in so small a window right where a face was a frame ago.
        """
        mn = self.min_neighbors if min_neighbors is None else int(min_neighbors)
        use_profile = self.profile if profile is None else bool(profile)
        gray = to_gray(_check_frame(frame))
        height, width = gray.shape
        found = []
        for x, y, w, h in _xywh(boxes):
            side = max(w, h)
            x0, y0 = max(0, int(x - grow * side)), max(0, int(y - grow * side))
            x1, y1 = min(width, int(np.ceil(x + w + grow * side))), min(height, int(np.ceil(y + h + grow * side)))
            if x1 - x0 < 24 or y1 - y0 < 24:
                continue
            roi = gray[y0:y1, x0:x1]
            f = min(1.0, face_px / side)  # scale applied to the roi
            if f < 1.0:
                roi = cv2.resize(roi, (max(1, int(round(roi.shape[1] * f))), max(1, int(round(roi.shape[0] * f)))),
                                 interpolation=cv2.INTER_AREA)
            if self.equalize:
                roi = cv2.equalizeHist(roi)
            min_side = max(24, int(side * f / size_range))
            max_side = int(np.ceil(side * f * size_range))
            if min(roi.shape) < min_side or max_side < min_side:
                continue
            r, n = self._scan(roi, mn, (min_side, min_side), (max_side, max_side), use_profile)
            if len(r):
                found.append(self._rows(r, n, 1.0 / f, x0, y0, mn))
        if not found:
            return EMPTY.copy()
        out = nms(np.concatenate(found), 0.3)
        keep = np.minimum(out[:, 2], out[:, 3]) >= self.min_size
        if self.max_size:
            keep &= np.maximum(out[:, 2], out[:, 3]) <= self.max_size
        return out[keep]


class YuNetDetector:
    """OpenCV's YuNet CNN face detector (`cv2.FaceDetectorYN`); needs the model file's path.

    Parameters: model (path to face_detection_yunet_*.onnx), score_threshold, nms_threshold,
    top_k, min_size (input pixels), downscale_width (detect on a resized copy; None: full).
    """

    name = "yunet"

    def __init__(self, model: str | os.PathLike | None = None, score_threshold: float = 0.6,
                 nms_threshold: float = 0.3, top_k: int = 500, min_size: int = 20,
                 downscale_width: int | None = 320):
        if not model:
            raise ValueError("the yunet detector needs a model path (model=.../face_detection_yunet_*.onnx)")
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"YuNet model not found: {path}")
        try:
            self.net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), float(score_threshold),
                                                 float(nms_threshold), int(top_k))
        except cv2.error as exc:
            raise ValueError(f"could not load the YuNet model {path}: {exc}") from None
        self.model_path = str(path)
        self.min_size = int(min_size)
        self.downscale_width = int(downscale_width) if downscale_width else None
        self._size = (320, 320)

    def detect(self, frame) -> np.ndarray:
        bgr = _to_bgr(_check_frame(frame))
        small, f = _downscale(bgr, self.downscale_width)
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, faces = self.net.detect(small)
        if faces is None or len(faces) == 0:
            return EMPTY.copy()
        out = np.empty((len(faces), 5), np.float32)
        out[:, :4] = faces[:, :4] * f
        out[:, 4] = faces[:, 14]
        # Clip to the frame: YuNet boxes can stick out a little at the border.
        h, w = bgr.shape[:2]
        x0 = np.clip(out[:, 0], 0, w)
        y0 = np.clip(out[:, 1], 0, h)
        x1 = np.clip(out[:, 0] + out[:, 2], 0, w)
        y1 = np.clip(out[:, 1] + out[:, 3], 0, h)
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = x0, y0, x1 - x0, y1 - y0
        keep = (out[:, 2] >= self.min_size) & (out[:, 3] >= self.min_size)
        return out[keep]


class MTCNNDetector:
    """MTCNN (P-Net -> R-Net -> O-Net), run in torch on the CPU with the weights of the PyPI
    package `mtcnn` (fer_ros.perception.mtcnn; `pip install mtcnn`, TensorFlow not needed).
    Finds partly covered faces (sunglasses) that Haar misses; a full scan costs more than
    Haar's, and between full scans `detect_near` follows the known faces with R-Net and O-Net
    only (docs/core.md).

    Parameters: min_size (input pixels; also where the pyramid starts, never below 12 px of
    the detected copy), downscale_width (detect on a resized copy; None: full), scale_factor
    and thresholds (P-Net, R-Net, O-Net face probability): mtcnn 1.0.0's defaults; threads:
    torch threads while its networks run (0: torch's own setting). On a small CPU more than one
    takes the cores the classifier and the camera need (docs/core.md: the node's latency).
    Score: O-Net's face probability (> thresholds[2]).
    """

    name = "mtcnn"

    def __init__(self, min_size: int = 20, downscale_width: int | None = 320, scale_factor: float = 0.709,
                 thresholds: tuple = (0.6, 0.7, 0.8), threads: int = 1):
        from .mtcnn import MTCNN, torch_threads  # torch and the mtcnn package's weights only when asked for

        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self._params = dict(min_size=min_size, downscale_width=downscale_width, scale_factor=scale_factor,
                            thresholds=tuple(thresholds), threads=threads)
        self.threads = int(threads)
        self._torch_threads = torch_threads
        self.net = MTCNN(scale_factor=scale_factor, thresholds=thresholds)  # ImportError: pip install mtcnn
        self.min_size = int(min_size)
        self.downscale_width = int(downscale_width) if downscale_width else None

    def clone(self) -> "MTCNNDetector":
        """Another detector with the same parameters (the weights are shared, read-only)."""
        return MTCNNDetector(**self._params)

    def detect(self, frame) -> np.ndarray:
        bgr = _to_bgr(_check_frame(frame))
        small, f = _downscale(bgr, self.downscale_width)
        with self._torch_threads(self.threads):
            found = self.net.detect(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), max(12.0, self.min_size / f))
        return self._rows(found, f)

    def detect_near(self, frame, boxes) -> np.ndarray:
        """Re-detect faces only near known boxes [K, >=4] (x, y, w, h: the previous frame's
        faces) with R-Net and O-Net (`MTCNN.refine`), so the pipeline scans the whole frame
        only every `detect_interval` frames, as it does with Haar."""
        known = _xywh(boxes)
        if not len(known):
            return EMPTY.copy()
        corners = np.concatenate([known[:, :2], known[:, :2] + known[:, 2:4]], 1)
        frame = _to_bgr(_check_frame(frame))
        with self._torch_threads(self.threads):
            return self._rows(self.net.refine(frame, corners, bgr=True), 1.0)

    def _rows(self, boxes: np.ndarray, f: float) -> np.ndarray:
        """MTCNN's (x1, y1, x2, y2, p) on the detected copy -> (x, y, w, h, p) in input pixels."""
        if len(boxes) == 0:
            return EMPTY.copy()
        out = np.empty((len(boxes), 5), np.float32)
        out[:, 0], out[:, 1] = boxes[:, 0] * f, boxes[:, 1] * f
        out[:, 2], out[:, 3] = (boxes[:, 2] - boxes[:, 0]) * f, (boxes[:, 3] - boxes[:, 1]) * f
        out[:, 4] = boxes[:, 4]
        keep = np.minimum(out[:, 2], out[:, 3]) >= self.min_size
        return out[keep]


class WholeImageDetector:
    """The whole frame is one face (score 1): for inputs that are already face crops."""

    name = "whole"

    def detect(self, frame) -> np.ndarray:
        frame = _check_frame(frame)
        h, w = frame.shape[:2]
        return np.array([[0, 0, w, h, 1.0]], np.float32)


DETECTORS = {"haar": HaarDetector, "yunet": YuNetDetector, "mtcnn": MTCNNDetector, "whole": WholeImageDetector}
DEFAULT_DETECTOR = "mtcnn"
#: The default's parameters (chosen with bench/bench_detectors.py, see docs/core.md).
DEFAULT_PARAMS = {"min_size": 30, "downscale_width": 320}
#: The default where DEFAULT_DETECTOR cannot be built (torch or the mtcnn package missing).
FALLBACK_DETECTOR = "haar"


def make_detector(name: str = "default", **params):
    """Build a detector by name: `haar`, `yunet`, `mtcnn`, `whole` or `default` (MTCNN on a
    320 px frame; Haar, with a warning, where MTCNN's packages are missing).

    Extra keyword arguments are the detector's parameters; for `default` they override
    DEFAULT_PARAMS. Unknown names or parameters raise ValueError with the valid choices.
    The built detector's `name` says which one it is.
    """
    key = (name or "default").lower()
    if key == "default":
        params = {**DEFAULT_PARAMS, **params}
        try:
            return _build(DEFAULT_DETECTOR, params)
        except ImportError as exc:
            import warnings

            warnings.warn(f"default detector: {DEFAULT_DETECTOR} unavailable ({exc}); using {FALLBACK_DETECTOR}",
                          stacklevel=2)
            return _build(FALLBACK_DETECTOR, params)
    if key not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of: default, {', '.join(DETECTORS)}")
    return _build(key, params)


def _build(key: str, params: dict):
    try:
        return DETECTORS[key](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for the {key} detector: {exc}") from None


def nms(boxes: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Non-maximum suppression on [K, 5] (x, y, w, h, score) rows; returns the kept rows."""
    if len(boxes) == 0:
        return boxes
    idx = cv2.dnn.NMSBoxes(boxes[:, :4].tolist(), boxes[:, 4].tolist(), 0.0, iou_threshold)
    return boxes[np.asarray(idx, int).reshape(-1)]

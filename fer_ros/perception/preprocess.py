"""The one preprocessing path shared by training and inference.

grayscale -> a square face crop framed like the FER-2013 training faces -> 48x48 uint8
(`crop_square`, reached through `crop_framed` / `crop_faces`) -> scale to [-1, 1] float32
NCHW (`normalize`).

Framing: a detector's box does not frame a face the way FER-2013's crops do. `Framing`
maps a box to the FER-2013 frame (side `scale` x the box side, centre moved by `dx`, `dy` box
sides); the values per detector were measured by `python -m training.calibrate` and are kept in
`FRAMINGS`. Training augments by jittering that same frame (scale, shift, rotation) and cropping
with the same `crop_square`, so the crops a model sees at run time come from the code and the
framing distribution it was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FACE_SIZE = 48


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 grayscale view of a gray, BGR or BGRA image.

    Raises ValueError for anything else (empty, wrong rank, odd channel count, non-uint8),
    so callers can report the user's mistake instead of crashing deep inside OpenCV.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError("empty image")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"unsupported image shape {image.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")


def expand_box(box, margin: float, shape) -> tuple[int, int, int, int]:
    """Widen an (x, y, w, h) box by `margin` of its size on every side, clipped to the image.

    Returns integer (x0, y0, x1, y1) with x1 > x0 and y1 > y0; raises ValueError when the
    box does not overlap the image at all.
    """
    x, y, w, h = (float(v) for v in box[:4])
    height, width = shape[:2]
    x0 = int(round(x - margin * w))
    y0 = int(round(y - margin * h))
    x1 = int(round(x + w + margin * w))
    y1 = int(round(y + h + margin * h))
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {tuple(box[:4])} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def crop_face(gray: np.ndarray, box, margin: float = 0.0, size: int = FACE_SIZE) -> np.ndarray:
    """Crop one box from a grayscale image and resize it to size x size uint8."""
    x0, y0, x1, y1 = expand_box(box, margin, gray.shape)
    crop = gray[y0:y1, x0:x1]
    # INTER_AREA when shrinking avoids aliasing; INTER_LINEAR when enlarging tiny faces.
    interp = cv2.INTER_AREA if crop.shape[0] >= size and crop.shape[1] >= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


@dataclass(frozen=True)
class Framing:
    """Where the FER-2013-style square crop sits relative to a detector box (x, y, w, h):
    side = scale * sqrt(w * h); centre = box centre + (dx, dy) * sqrt(w * h)."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def square(self, box) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the crop for one box."""
        x, y, w, h = (float(v) for v in box[:4])
        side = math.sqrt(max(w, 0.0) * max(h, 0.0))
        return x + w / 2 + self.dx * side, y + h / 2 + self.dy * side, self.scale * side

    def to_dict(self) -> dict:
        return {"scale": self.scale, "dx": self.dx, "dy": self.dy}


#: Crop framing per detector, measured by `python -m training.calibrate` (numbers and method in
#: docs/results/crop_calibration.json; a test checks that these agree with it). "whole" is for
#: inputs that already are FER-2013-style crops.
FRAMINGS = {
    "haar": Framing(1.06, 0.0, 0.01),
    "yunet": Framing(1.15, 0.01, -0.01),
    "mtcnn": Framing(1.13, 0.01, -0.01),
    "whole": Framing(1.0, 0.0, 0.0),
}


def framing_for(detector_name: str | None) -> Framing:
    """The measured framing for a detector name; identity when unknown. "default" is MTCNN's
    (detectors.DEFAULT_DETECTOR; the pipeline asks with the built detector's own name, so a
    default that fell back to Haar gets Haar's)."""
    key = (detector_name or "default").lower()
    key = {"default": "mtcnn"}.get(key, key)
    return FRAMINGS.get(key, Framing())


def crop_square(gray: np.ndarray, cx: float, cy: float, side: float, size: int = FACE_SIZE,
                angle: float = 0.0) -> np.ndarray:
    """The square of `side` pixels centred on (cx, cy), rotated by `angle` degrees
    (counter-clockwise), as a size x size uint8 image. Parts outside the image repeat its
    border pixels, so a face at the frame's edge keeps its framing instead of being squashed.

    Large regions are first shrunk with area averaging (no aliasing); the final
    resampling is bilinear. Training augmentation and inference both crop with this."""
    if side <= 0:
        raise ValueError(f"crop side must be > 0, got {side}")
    height, width = gray.shape[:2]
    reach = side * (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))) / 2 + 2
    x0, y0 = int(math.floor(cx - reach)), int(math.floor(cy - reach))
    x1, y1 = int(math.ceil(cx + reach)), int(math.ceil(cy + reach))
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"face crop centred at ({cx:.0f}, {cy:.0f}) lies outside the {width}x{height} image")
    roi = gray[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    pads = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if any(pads):
        roi = cv2.copyMakeBorder(roi, *pads, cv2.BORDER_REPLICATE)
    f = 1.0
    if side > 2 * size:  # shrink by area averaging to about twice the output first
        f = (2 * size) / side
        roi = cv2.resize(roi, (max(1, round(roi.shape[1] * f)), max(1, round(roi.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
        f = roi.shape[1] / float(x1 - x0)
    # Map the roi to the output: rotate about the crop centre and scale side -> size, in
    # pixel-centre coordinates (an edge coordinate e is the centre coordinate e - 0.5).
    k = size / (side * f)
    ccx, ccy = (cx - x0) * f - 0.5, (cy - y0) * f - 0.5
    m = cv2.getRotationMatrix2D((ccx, ccy), angle, k)
    m[0, 2] += size / 2 - 0.5 - ccx
    m[1, 2] += size / 2 - 0.5 - ccy
    return cv2.warpAffine(roi, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_framed(gray: np.ndarray, box, framing: Framing = Framing(), size: int = FACE_SIZE) -> np.ndarray:
    """Crop one detector box, framed like the training faces (see `Framing`): uint8 [size, size]."""
    cx, cy, side = framing.square(box)
    return crop_square(gray, cx, cy, side, size)


def crop_faces(image: np.ndarray, boxes, framing: Framing = Framing(), size: int = FACE_SIZE) -> np.ndarray:
    """Grayscale `image`, crop every (x, y, w, h) box with `framing` and resize: uint8 [N, size, size]."""
    gray = to_gray(image)
    out = np.empty((len(boxes), size, size), np.uint8)
    for i, box in enumerate(boxes):
        out[i] = crop_framed(gray, box, framing, size)
    return out


def normalize(faces: np.ndarray) -> np.ndarray:
    """uint8 faces [N, H, W] (or one [H, W]) -> float32 [N, 1, H, W] scaled to [-1, 1]."""
    faces = np.asarray(faces)
    if faces.ndim == 2:
        faces = faces[None]
    if faces.ndim != 3:
        raise ValueError(f"expected faces [N, H, W], got shape {faces.shape}")
    return (faces.astype(np.float32) * (1.0 / 127.5) - 1.0)[:, None]


# Side of the five test-time crops (centre and corners): the middle of the 85-100% random crops
# the model was trained on.
TTA_CROP = 0.9
# Where the test-time crops sit, as fractions of the slack (side - crop side) in x and y:
# centre, then the four corners. Symmetric under mirroring (see tta_views).
TTA_ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))


def tta_view_count(crops: bool = True, flip: bool = True) -> int:
    """Views per face that tta_views makes: 1, 2 (flip), 6 (crops) or 12 (both)."""
    return (1 + len(TTA_ANCHORS) * bool(crops)) * (1 + bool(flip))


def tta_views(faces: np.ndarray, crops: bool = True, flip: bool = True, scale: float = TTA_CROP) -> np.ndarray:
    """The views of each face that test-time averaging classifies: the face itself; with
    crops=True also its centre and four corner crops of `scale` side, each resized back with
    `crop_face` (as the training crops were); with flip=True all of these mirrored too.
    uint8 [N, H, W] -> [tta_view_count(crops, flip), N, H, W]. The set of views of a mirrored
    face is the mirrored set, so averaging over them gives a face and its mirror image one answer."""
    faces = np.asarray(faces)
    if len(faces) == 0:
        return np.zeros((tta_view_count(crops, flip),) + faces.shape, np.uint8)
    views = [faces]
    if crops:
        n, h, w = faces.shape
        cw, ch = scale * w, scale * h
        for ax, ay in TTA_ANCHORS:
            views.append(np.stack([crop_face(f, (ax * (w - cw), ay * (h - ch), cw, ch), 0.0, h) for f in faces]))
    if flip:
        views += [v[:, :, ::-1] for v in views]
    return np.stack(views)

"""The one preprocessing path shared by training and inference.

grayscale -> crop a face box (optionally widened by a margin) -> resize to 48x48 uint8
(`crop_faces`) -> scale to [-1, 1] float32 NCHW (`normalize`). Training calls
`crop_faces` with jittered boxes for augmentation, so what the model sees at run time is
produced by exactly the same code it was trained on.
"""

from __future__ import annotations

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


def crop_faces(image: np.ndarray, boxes, margin: float = 0.0, size: int = FACE_SIZE) -> np.ndarray:
    """Grayscale `image`, crop every (x, y, w, h) box and resize: uint8 [N, size, size]."""
    gray = to_gray(image)
    out = np.empty((len(boxes), size, size), np.uint8)
    for i, box in enumerate(boxes):
        out[i] = crop_face(gray, box, margin, size)
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


def preprocess(image: np.ndarray, boxes, margin: float = 0.0, size: int = FACE_SIZE) -> np.ndarray:
    """Full path from a frame and its face boxes to the model input float32 [N, 1, size, size]."""
    return normalize(crop_faces(image, boxes, margin, size))

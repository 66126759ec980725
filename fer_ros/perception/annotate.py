"""Draw face results on a frame: box, id, label and confidence (for the annotated topic and CLI)."""

from __future__ import annotations

import cv2
import numpy as np

from fer_ros import LABELS

# One BGR colour per label, so a glance at the screen tells the expression.
COLORS = {
    "angry": (40, 40, 230), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (0, 200, 255),
    "sad": (200, 120, 40), "surprise": (230, 230, 40), "neutral": (200, 200, 200),
}


def _bgr_copy(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy()


def draw_results(bgr, results, show_bar: bool = True) -> np.ndarray:
    """A BGR copy of `bgr` with every result drawn: box, "#id label 87%", and a score bar."""
    out = _bgr_copy(bgr)
    h, w = out.shape[:2]
    scale = max(0.4, min(1.0, w / 1280.0 * 1.2))
    thick = max(1, int(round(w / 640.0)))
    for r in results:  # boxes first, so no box line runs through another face's label
        x, y, bw, bh = (int(v) for v in r.box)
        cv2.rectangle(out, (x, y), (x + bw, y + bh), COLORS.get(r.expression, (255, 255, 255)), thick + 1)
    for r in results:
        x, y, bw, bh = (int(v) for v in r.box)
        color = COLORS.get(r.expression, (255, 255, 255))
        text = f"#{r.face_id} {r.expression} {100 * r.confidence:.0f}%"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(h - base, y + bh + th + 4)
        cv2.rectangle(out, (x, ty - th - base), (x + tw + 4, ty + base), color, -1)
        cv2.putText(out, text, (x + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
        if show_bar and bh >= 60:
            # Seven thin bars inside the box, one per label, length = probability.
            bar_h = max(2, bh // 24)
            for i, (label, s) in enumerate(zip(LABELS, np.asarray(r.scores, float))):
                yy = y + bh - (len(LABELS) - i) * (bar_h + 1) - 2
                cv2.rectangle(out, (x + 2, yy), (x + 2 + int((bw - 4) * float(s)), yy + bar_h),
                              COLORS[label], -1)
    return out

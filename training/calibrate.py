"""Crop calibration: how each face detector frames a face, compared with FER-2013's framing.

    python -m training.calibrate [--n 2000] [--out docs/results/crop_calibration.json]

The model learns from FER-2013's 48x48 crops, so at run time a detector box has to be turned
into a crop framed the same way (`fer_ros.perception.preprocess.Framing`: side = scale x box side,
centre moved by dx, dy box sides). Two measurements, for every detector:

1. FER-2013 faces on a canvas: N Training faces, enlarged to 120 px and placed in the middle
   of a 320x320 canvas (border pixels repeated). The detector's box is compared with the
   pasted face, whose frame is known exactly.
2. Real full images through landmarks: YuNet's five landmarks (eyes, nose, mouth corners) are
   located once on the canvas faces, giving where they sit in a FER-2013 frame (the median
   template). On JAFFE's 213 full 256x256 images and the shared photos and videos, a similarity
   fit of that template to the face's landmarks gives its FER-2013 frame, compared with the
   detector's box for the same face.

The framing adopted for a detector is the median of measurement 2 over all real images (its
own scale, dx, dy); measurement 1 cross-checks it. The spread of the box relative to the frame
(over faces and, in the videos, from frame to frame) is what training's framing jitter covers.
Results go to docs/results/crop_calibration.json; `fer_ros.perception.preprocess.FRAMINGS` holds the
adopted values and a test checks they agree. Needs the shared YuNet model (for the landmarks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from fer_ros.perception.detectors import make_detector
from training import data as D
from training.report import git_commit

CANVAS, FACE = 320, 120
VIDEOS = ("single_face.mp4", "noface_face.mov")
PHOTOS = ("single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg")


def on_canvas(face48: np.ndarray) -> np.ndarray:
    """A 48x48 face enlarged to FACE px in the middle of a CANVAS x CANVAS image (border repeated)."""
    f = cv2.resize(face48, (FACE, FACE), interpolation=cv2.INTER_CUBIC)
    p = (CANVAS - FACE) // 2
    return cv2.copyMakeBorder(f, p, CANVAS - FACE - p, p, CANVAS - FACE - p, cv2.BORDER_REPLICATE)


class Landmarks:
    """YuNet's five landmarks for the faces of an image: [K, 5, 2] pixels and boxes [K, 4]."""

    def __init__(self, model: Path):
        self.net = cv2.FaceDetectorYN.create(str(model), "", (320, 320), 0.6, 0.3, 50)

    def __call__(self, image: np.ndarray):
        bgr = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        self.net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self.net.detect(bgr)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 5, 2), np.float32), np.zeros((0, 4), np.float32)
        return faces[:, 4:14].reshape(-1, 5, 2).astype(np.float32), faces[:, :4].astype(np.float32)


def fer_frame(template: np.ndarray, landmarks: np.ndarray):
    """(centre x, centre y, side) of the FER-2013 frame whose template landmarks fit these best."""
    m, _ = cv2.estimateAffinePartial2D(template, landmarks)
    if m is None:
        return None
    side = float(np.hypot(m[0, 0], m[1, 0]))
    cx, cy = m @ np.array([0.5, 0.5, 1.0])
    return float(cx), float(cy), side


def framing_of(box, frame) -> tuple[float, float, float]:
    """(scale, dx, dy) that map the detector box onto the frame (preprocess.Framing's terms)."""
    x, y, w, h = (float(v) for v in box[:4])
    s = np.sqrt(w * h)
    cx, cy, side = frame
    return side / s, (cx - (x + w / 2)) / s, (cy - (y + h / 2)) / s


def summary(rows) -> dict:
    r = np.asarray(rows, np.float64).reshape(-1, 3)
    if len(r) == 0:
        return {"n": 0}
    out = {"n": int(len(r))}
    for k, name in enumerate(("scale", "dx", "dy")):
        v = r[:, k]
        out[name] = {"median": round(float(np.median(v)), 4), "sd": round(float(v.std()), 4),
                     "p5": round(float(np.percentile(v, 5)), 4), "p95": round(float(np.percentile(v, 95)), 4)}
    return out


def match(boxes: np.ndarray, ref_boxes: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (detector box i, landmark face j) whose centres lie within 30% of the box side."""
    pairs = []
    for i, b in enumerate(boxes):
        if len(ref_boxes) == 0:
            break
        c = b[:2] + b[2:4] / 2
        d = np.hypot(*(ref_boxes[:, :2] + ref_boxes[:, 2:4] / 2 - c).T)
        j = int(np.argmin(d))
        if d[j] < 0.3 * np.sqrt(b[2] * b[3]):
            pairs.append((i, j))
    return pairs


def real_images(shared: Path):
    """(source name, image) for JAFFE's full images, the photos and every 3rd video frame."""
    for im in np.load(shared / "data" / "jaffe.npz")["images"]:
        yield "jaffe", im
    for name in PHOTOS:
        im = cv2.imread(str(shared / "media" / name))
        if im is not None:
            yield "photos", im
    for name in VIDEOS:
        cap = cv2.VideoCapture(str(shared / "media" / name))
        k = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if k % 3 == 0:
                yield name, frame
            k += 1
        cap.release()


def calibrate(shared: Path, detectors: dict, n: int = 2000) -> dict:
    shared = Path(shared)
    lm = Landmarks(shared / "models" / "face_detection_yunet_2026may.onnx")
    faces = D.fer2013("Training", shared).images[:n]  # no test data involved
    p = (CANVAS - FACE) / 2
    # 1. template: landmarks in FER-frame units, median over the canvas faces YuNet finds
    pts = []
    canvases = [on_canvas(f) for f in faces]
    for c in canvases:
        marks, _ = lm(c)
        if len(marks):
            pts.append((marks[0] - p) / FACE)
    template = np.median(np.stack(pts), 0).astype(np.float32)
    true_frame = (CANVAS / 2, CANVAS / 2, float(FACE))
    out = {"method": __doc__.split("\n\n")[2].strip(), "n_canvas_faces": len(faces),
           "template_landmarks": template.round(4).tolist(), "template_from": len(pts), "detectors": {}}
    for name, det in detectors.items():
        canvas_rows = []
        for c in canvases:
            b = det.detect(c)
            if len(b):
                canvas_rows.append(framing_of(b[np.argmax(b[:, 2] * b[:, 3])], true_frame))
        real = {}
        for src, im in real_images(shared):
            boxes = det.detect(im)
            marks, ref = lm(im)
            for i, j in match(boxes, ref):
                fr = fer_frame(template, marks[j])
                if fr is not None:
                    real.setdefault(src, []).append(framing_of(boxes[i], fr))
        all_real = [r for rows in real.values() for r in rows]
        s = summary(all_real)
        adopted = {k: round(s[k]["median"], 2) for k in ("scale", "dx", "dy")} if s["n"] else None
        out["detectors"][name] = {
            "canvas": {**summary(canvas_rows), "detected": round(len(canvas_rows) / len(canvases), 4)},
            "real": {src: summary(rows) for src, rows in real.items()},
            "real_all": s, "adopted": adopted}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--n", type=int, default=2000, help="FER-2013 Training faces for the canvas measurement")
    ap.add_argument("--out", default="docs/results/crop_calibration.json")
    a = ap.parse_args(argv)
    shared = D.shared_path(a.shared)
    dets = {"haar": make_detector("haar"),
            "yunet": make_detector("yunet", model=shared / "models" / "face_detection_yunet_2026may.onnx"),
            "mtcnn": make_detector("mtcnn")}
    r = calibrate(shared, dets, a.n)
    r["commit"] = git_commit()
    r["command"] = "python -m training.calibrate" + (f" --n {a.n}" if a.n != 2000 else "")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(r, indent=1) + "\n")
    print(f"{'detector':8} {'measurement':22} {'n':>5}  {'scale':>16}  {'dx':>15}  {'dy':>15}")
    for name, d in r["detectors"].items():
        rows = [("FER on canvas", d["canvas"])] + [(f"real: {k}", v) for k, v in d["real"].items()]
        rows.append(("real, all (adopted)", d["real_all"]))
        for label, s in rows:
            if not s.get("n"):
                print(f"{name:8} {label:22} {0:>5}")
                continue
            cells = "  ".join(f"{s[k]['median']:>7.3f} sd {s[k]['sd']:.3f}" for k in ("scale", "dx", "dy"))
            print(f"{name:8} {label:22} {s['n']:>5}  {cells}")
        print(f"{name:8} canvas detection rate {d['canvas']['detected']:.1%}; adopted framing {d['adopted']}")
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How a model holds up when faces are framed, lit and focused the way a robot's camera and
detector deliver them.

    python -m training.robustness fer_ros/models/fer_mobilenet_v1.onnx [--views 1 2] [--json OUT]

Everything goes through `fer_ros.perception.classifier.ExpressionClassifier` (the nodes' path;
a .pt training checkpoint runs on its torch backend) with 1, 2 (flip) or 12 (flip + crops)
views per face, and prints:

1. FER-2013 PublicTest accuracy with each face re-framed: the crop's side 0.8-1.3 times the
   FER-2013 frame and its centre shifted by up to +-10% of the side (border pixels repeated
   where the crop leaves the image, `preprocess.crop_square`, as at run time); and under
   brightness, contrast, gamma and blur changes. Each row gives the change from the clean faces.
2. JAFFE through the whole pipeline: each full 256x256 image goes through the default detector,
   the calibrated crop (`preprocess.FRAMINGS`) and the classifier; an image with no face found
   counts as wrong. The same with the crop the package used before the calibration (box plus 10%
   per side) for comparison. For a FER-2013-only model this is a cross-dataset test.
3. The labelled photos in shared/media (0-f1-su-ph.jpg: surprise, 0-f15-hao-ph.jpg: happy).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from fer_ros import LABELS
from fer_ros.perception.classifier import ExpressionClassifier
from fer_ros.perception.preprocess import Framing, crop_square, framing_for
from training import data as D
from training.report import provenance

SCALES = (0.8, 0.9, 1.1, 1.2, 1.25, 1.3)
SHIFTS = (0.05, 0.08, 0.1)
VIEWS = {1: (False, False), 2: (True, False), 12: (True, True)}  # views -> (flip, crops)
MEDIA_LABELS = {"0-f1-su-ph.jpg": "surprise", "0-f15-hao-ph.jpg": "happy"}


def reframe(faces: np.ndarray, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Crop each 48x48 face again: side `scale` x 48, centre moved by (dx, dy) sides."""
    c = 24.0
    return np.stack([crop_square(f, c + dx * 48, c + dy * 48, scale * 48) for f in faces])


def photometric(faces: np.ndarray, kind: str, value: float) -> np.ndarray:
    f = faces.astype(np.float32)
    if kind == "brightness":
        f = f + value
    elif kind == "contrast":
        f = (f - 128.0) * value + 128.0
    elif kind == "gamma":
        f = 255.0 * (f / 255.0) ** value
    elif kind == "blur":
        return np.stack([cv2.GaussianBlur(x, (0, 0), value) for x in faces])
    return np.clip(f, 0, 255).astype(np.uint8)


def conditions():
    """(name, function uint8 faces -> faces) for every test condition, clean first."""
    yield "clean", lambda f: f
    for s in SCALES:
        yield f"scale {s:g}", lambda f, s=s: reframe(f, s)
    for d in SHIFTS:
        yield f"shift x +-{d:g}", lambda f, d=d: (reframe(f, 1, d), reframe(f, 1, -d))
        yield f"shift y +-{d:g}", lambda f, d=d: (reframe(f, 1, 0, d), reframe(f, 1, 0, -d))
    for kind, values in (("brightness", (-40, 40)), ("contrast", (0.6, 1.4)), ("gamma", (0.7, 1.4)),
                         ("blur", (1.0, 2.0))):
        for v in values:
            yield f"{kind} {v:g}", lambda f, k=kind, v=v: photometric(f, k, v)


def predictions(clf: ExpressionClassifier, faces: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class per face, in batches: 12 views of all 3,589 faces at once would need gigabytes of activations."""
    return np.concatenate([clf.predict(faces[i:i + batch]).argmax(1) for i in range(0, len(faces), batch)])


def accuracy(clf: ExpressionClassifier, faces: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    return float((predictions(clf, faces, batch) == y).mean())


def fer_table(clf, faces, y) -> dict:
    out = {}
    for name, fn in conditions():
        views = fn(faces)
        # a +-shift is the mean of both directions
        acc = np.mean([accuracy(clf, v, y) for v in views]) if isinstance(views, tuple) else accuracy(clf, views, y)
        out[name] = round(100 * float(acc), 2)
    return out


def jaffe_faces(shared: Path, det):
    """JAFFE's full images, their labels in LABELS order and detector `det`'s largest box per
    image (None where it finds no face): detected once, cropped per framing below."""
    d = np.load(shared / "data" / "jaffe.npz")
    names = [str(c) for c in d["class_names"]]
    y = np.array([LABELS.index(names[k]) for k in d["labels"]])
    boxes = []
    for im in d["images"]:
        b = det.detect(im)
        boxes.append(b[np.argmax(b[:, 2] * b[:, 3]), :4] if len(b) else None)
    return d["images"], y, boxes


def jaffe_predictions(clf, jaffe, framing: Framing) -> np.ndarray:
    """Class per JAFFE image through detector -> framed crop -> classifier (largest face); -1 if none."""
    from fer_ros.perception.preprocess import crop_faces

    images, y, boxes = jaffe
    pred = np.full(len(y), -1)
    for i, (im, box) in enumerate(zip(images, boxes)):
        if box is not None:
            pred[i] = int(clf.predict(crop_faces(im, [box], framing)).argmax(1)[0])
    return pred


def jaffe_pipeline(clf, jaffe, framing: Framing) -> dict:
    """7-class JAFFE accuracy through detector -> framed crop -> classifier (largest face)."""
    y = jaffe[1]
    pred = jaffe_predictions(clf, jaffe, framing)
    return {"accuracy": round(100 * float((pred == y).mean()), 2), "detected": int((pred >= 0).sum()),
            "n": int(len(y)), "framing": framing.to_dict()}


def media(clf, shared: Path, detector: str = "default") -> dict:
    from fer_ros.perception.pipeline import ExpressionPipeline

    pipe = ExpressionPipeline(detector=detector, classifier=clf, tracking=False)
    out = {}
    for name, want in MEDIA_LABELS.items():
        img = cv2.imread(str(shared / "media" / name))
        res = pipe.process(img) if img is not None else []
        face = max(res, key=lambda r: r.box[2] * r.box[3]) if res else None
        out[name] = {"expected": want, "got": face.expression if face else None,
                     "confidence": round(face.confidence, 3) if face else None}
    return out


def eval_sets(shared: Path, limit: int = 0, detector: str = "default"):
    """PublicTest's faces and labels (only the first `limit` if set) and, without a limit, JAFFE through
    `detector` (jaffe_faces) with that detector's calibrated framing; (faces, y, None, None) with one."""
    test = D.fer2013("PublicTest", shared)
    faces, y = test.faces48(), test.labels
    if limit:
        return faces[:limit], y[:limit], None, None
    from fer_ros.perception.detectors import make_detector

    det = make_detector(detector)
    return faces, y, jaffe_faces(shared, det), framing_for(det.name)  # the built one's (a fallback's)


def classifier(model, views: int) -> ExpressionClassifier:
    """`model` (.onnx, or a .pt checkpoint on the torch backend) with 1, 2 or 12 views per face."""
    flip, crops = VIEWS[views]
    return ExpressionClassifier(model, backend="torch" if str(model).endswith(".pt") else "onnxruntime",
                                flip_average=flip, crop_average=crops)


def add_options(ap: argparse.ArgumentParser, skipped: str = "JAFFE") -> None:
    """The options training.robustness and training.compare share; `skipped`: what --limit leaves out."""
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2], choices=sorted(VIEWS))
    ap.add_argument("--limit", type=int, default=0, help=f"only the first N PublicTest faces (and skip {skipped})")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--detector", default="default", help=f"face detector for {skipped} (make_detector name)")
    ap.add_argument("--json", default=None, help="also write the results here")


def run(model, shared, views=(1, 2), limit: int = 0, detector: str = "default") -> dict:
    shared = Path(shared)
    faces, y, jaffe, framing = eval_sets(shared, limit, detector)
    res = {"model": str(model), "n_publictest": int(len(y)), "detector": detector, "views": {}}
    for v in views:
        clf = classifier(model, v)
        r = {"publictest": fer_table(clf, faces, y)}
        if jaffe is not None:
            r["jaffe_pipeline"] = jaffe_pipeline(clf, jaffe, framing)
            r["jaffe_pipeline_old_crop"] = jaffe_pipeline(clf, jaffe, Framing(1.2))
            r["media"] = media(clf, shared, detector)
        res["views"][str(v)] = r
    return res


def print_report(res: dict) -> None:
    views = list(res["views"])
    print(f"{res['model']}: FER-2013 PublicTest ({res['n_publictest']} faces), accuracy % (change from clean)")
    print(f"{'condition':18}" + "".join(f"{v + ' view(s)':>22}" for v in views))
    for cond in res["views"][views[0]]["publictest"]:
        cells = []
        for v in views:
            t = res["views"][v]["publictest"]
            cells.append(f"{t[cond]:6.2f} ({t[cond] - t['clean']:+6.2f})")
        print(f"{cond:18}" + "".join(f"{c:>22}" for c in cells))
    for v in views:
        r = res["views"][v]
        if "jaffe_pipeline" in r:
            j, o = r["jaffe_pipeline"], r["jaffe_pipeline_old_crop"]
            print(f"{v} view(s): JAFFE through the pipeline {j['accuracy']:.2f}% ({j['detected']}/{j['n']} faces found; "
                  f"calibrated crop {j['framing']}); with the old 1.2x box crop {o['accuracy']:.2f}%")
            print(f"{v} view(s): photos " + ", ".join(f"{k}: {m['got']} ({m['confidence']}; expected {m['expected']})"
                                                    for k, m in r["media"].items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an .onnx model or a .pt training checkpoint")
    add_options(ap, "JAFFE and the photos")
    a = ap.parse_args(argv)
    res = run(a.model, D.shared_path(a.shared), a.views, a.limit, a.detector)
    res.update(provenance("training.robustness", argv))
    print_report(res)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

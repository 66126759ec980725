#!/usr/bin/env python3
"""Speed of the core pipeline on 640x480 frames with real faces, against a paper-style baseline.

Prints, after warm-up:
- pipeline ms/frame p50/p95 (and mean) with 1 face (single_face.mp4 frames, letterboxed to
  640x480) and 4 faces (multi_face.jpg resized to 640x480), default settings;
- the same with a full detector scan on every frame (detect_interval=1), and with YuNet
  when its model is available (for the detector choice in docs/core.md);
- classifier ms/face for batches of 1, 4, 8 and 32 faces;
- the paper-style baseline in the same process: Haar at full resolution, scale 1.1,
  5 neighbours, faces classified one at a time, no tracking; and the ratio baseline/pipeline.

    .venv/bin/python bench/bench_pipeline.py [--model M.onnx] [--also-model fer_ros/models/fer_mobilenet_v1.onnx] [--frames 150]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_ros.perception.classifier import ExpressionClassifier  # noqa: E402
from fer_ros.perception.detectors import HaarDetector, make_detector  # noqa: E402
from fer_ros.perception.pipeline import ExpressionPipeline  # noqa: E402
from fer_ros.perception.preprocess import crop_faces, framing_for  # noqa: E402
from training.data import shared_path as shared_dir  # noqa: E402


def letterbox(img: np.ndarray, w: int = 640, h: int = 480) -> np.ndarray:
    f = min(w / img.shape[1], h / img.shape[0])
    small = cv2.resize(img, (int(round(img.shape[1] * f)), int(round(img.shape[0] * f))), interpolation=cv2.INTER_AREA)
    out = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return out


def video_frames(path: Path) -> list[np.ndarray]:
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(letterbox(f))
    return frames


def stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):6.2f}  p95 {np.percentile(a, 95):6.2f}  mean {a.mean():6.2f}"


def time_frames(fn, frames, n: int, warmup: int) -> tuple[list[float], list[int]]:
    """Run fn(frame, stamp) over the frames cyclically; ms per frame and face counts."""
    for i in range(warmup):
        fn(frames[i % len(frames)], i / 30.0)
    ms, faces = [], []
    for i in range(n):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        k = fn(f, (warmup + i) / 30.0)
        ms.append((time.perf_counter() - t0) * 1e3)
        faces.append(k)
    return ms, faces


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="expression ONNX model for the pipeline (default: what ExpressionClassifier() "
                         "loads, i.e. the shipped INT8 copy on CPU when present)")
    ap.add_argument("--frames", type=int, default=150, help="timed frames per case")
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op and OpenCV threads")
    ap.add_argument("--also-model", action="append", default=[], metavar="M.onnx",  # e.g. the FP32 file
                    help="also time the classifier alone with this model (e.g. an INT8 copy), same process")
    ap.add_argument("--yunet", default=str(shared_dir() / "models" / "face_detection_yunet_2026may.onnx"))
    args = ap.parse_args()

    media = shared_dir() / "media"
    if not media.is_dir():
        print(f"shared media not found at {media} (set FER_SHARED)", file=sys.stderr)
        return 2
    if args.model is None:  # the package default, as the nodes use it
        args.model = str(ExpressionClassifier(backend="onnxruntime").model_path)
    if not Path(args.model).is_file():
        print(f"expression model not found: {args.model} (pass --model)", file=sys.stderr)
        return 2
    cv2.setNumThreads(args.threads)
    one = video_frames(media / "single_face.mp4")
    four = [cv2.resize(cv2.imread(str(media / "multi_face.jpg")), (640, 480), interpolation=cv2.INTER_AREA)]
    clf = ExpressionClassifier(args.model, backend="onnxruntime", threads=args.threads)  # flip averaging on
    clf_plain = ExpressionClassifier(args.model, backend="onnxruntime", threads=args.threads, flip_average=False)
    # 12 views per face, as config/therapy.yaml runs it
    clf_crops = ExpressionClassifier(args.model, backend="onnxruntime", threads=args.threads, crop_average=True)
    print(f"model {args.model}  backend {clf.backend}  threads {args.threads}  cpus {os.cpu_count()}  "
          f"opencv {cv2.__version__}")
    print(f"{args.frames} timed frames per case after {args.warmup} warm-up frames; 640x480 BGR\n")

    def pipe_fn(pipe, stages):
        def fn(f, t):
            n = len(pipe.process(f, t))
            for k in ("detect", "classify", "track"):
                stages.setdefault(k, []).append(pipe.last_timings[k])
            return n
        return fn

    rows = {}
    cases = [("pipeline (default: haar@320, detect_interval=5)", dict()),
             ("pipeline, full scan every frame (detect_interval=1)", dict(detect_interval=1)),
             ("pipeline, background full scans (async_scan=True)", dict(async_scan=True)),
             ("pipeline, no flip averaging (flip_average=False)", dict(classifier=clf_plain)),
             ("pipeline, 12 views per face (crop_average=True)", dict(classifier=clf_crops))]
    if Path(args.yunet).is_file():
        cases.append(("pipeline, yunet@320 (needs a model path)",
                      dict(detector="yunet", detector_params={"model": args.yunet, "downscale_width": 320})))
    for name, kw in cases:
        for label, frames in (("1 face ", one), ("4 faces", four)):
            pipe, stages = ExpressionPipeline(**{"classifier": clf, **kw}), {}
            ms, faces = time_frames(pipe_fn(pipe, stages), frames, args.frames, args.warmup)
            rows[(name, label)] = ms
            pipe.close()
            parts = " ".join(f"{k} {np.median(v[args.warmup:]):.2f}" for k, v in stages.items())
            print(f"{name:55s} {label}: {stats(ms)} ms/frame  (faces found: median {int(np.median(faces))}; "
                  f"p50 ms {parts})")

    # Paper-style baseline: Haar on the full frame, scale 1.1, 5 neighbours; one face at a time.
    haar_full = HaarDetector(scale_factor=1.1, min_neighbors=5, min_size=30, downscale_width=None)

    def baseline(frame, _t):
        boxes = haar_full.detect(frame)
        for b in boxes:  # the paper classifies each face once, unmirrored
            clf_plain.predict(crop_faces(frame, [b[:4]], framing_for("haar")))
        return len(boxes)

    n_base = max(20, args.frames // 3)  # it is slow; fewer frames suffice for a stable median
    for label, frames in (("1 face ", one), ("4 faces", four)):
        ms, faces = time_frames(baseline, frames, n_base, 3)
        rows[("baseline", label)] = ms
        print(f"{'baseline (haar full-res 1.1/5, one face at a time)':55s} {label}: {stats(ms)} ms/frame  "
              f"(faces found: median {int(np.median(faces))})")

    print()
    for label in ("1 face ", "4 faces"):
        base = np.median(rows[("baseline", label)])
        pipe = np.median(rows[(cases[0][0], label)])
        full = np.median(rows[(cases[1][0], label)])
        print(f"speed-up vs baseline, {label}: default {base / pipe:5.1f}x   full scan every frame {base / full:5.1f}x")

    # Classifier alone: real face crops, tiled to the batch size.
    boxes = make_detector("haar", downscale_width=None).detect(four[0])
    crops = crop_faces(four[0], boxes[:, :4], framing_for("haar"))
    models = [(args.model, clf), (f"{args.model} with flip_average=False", clf_plain),
              (f"{args.model} with crop_average=True (12 views)", clf_crops)]
    models += [(m, ExpressionClassifier(m, backend="onnxruntime", threads=args.threads)) for m in args.also_model]
    for path, c in models:
        print(f"\nclassifier {Path(path).name}")
        for n in (1, 4, 8, 32):
            batch = np.ascontiguousarray(np.resize(crops, (n, 48, 48)))
            for _ in range(10):
                c.predict(batch)
            reps = max(20, 400 // n)
            ms = []
            for _ in range(reps):
                t0 = time.perf_counter()
                c.predict(batch)
                ms.append((time.perf_counter() - t0) * 1e3)
            print(f"classifier batch {n:2d}: {np.median(ms):6.3f} ms/batch  {np.median(ms) / n:6.3f} ms/face (p50)")
        ms = []
        for _ in range(100):
            t0 = time.perf_counter()
            for face in crops[:4]:
                c.predict(face[None])
            ms.append((time.perf_counter() - t0) * 1e3)
        print(f"classifier 4 faces one at a time: {np.median(ms) / 4:6.3f} ms/face (p50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

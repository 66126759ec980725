#!/usr/bin/env python3
"""Face detector candidates on the shared media: recall, false alarms, photos and speed.

Prints one row per candidate:
- single: frames of single_face.mp4 with a face (a face is in every frame: turning, a hand
  over the mouth);
- after entry: frames of noface_face.mov with a face from the frame where the face enters on
  (the largest jump in image content between two frames, the same rule as test/conftest.py
  `scene_cut`; printed once), and how many frames before it had a "face";
- no_face: frames of no_face.mp4 with a (false) face;
- multi: faces found in multi_face.jpg (5 people, one in sunglasses) at its size, 1000x667;
- jaffe: JAFFE images (213, 256x256 gray) with a face;
- ms 1 face: p50 milliseconds per frame over the single_face.mp4 frames, the lowest of
  --repeat passes (the least disturbed by other processes on a shared machine);
- ms 4 faces: the same on multi_face.jpg resized to 640x480, repeated as a video.
All video frames are letterboxed to 640x480, as in bench/bench_pipeline.py. "pipeline" rows
run `ExpressionPipeline.detect` frame after frame (full scans every `detect_interval` frames,
re-detection near the known faces in between, held boxes through short misses); the other
rows run the detector alone on every frame.

Optional candidates run when importable: the "mtcnn" detector (PyPI mtcnn's weights), MTCNN
(facenet-pytorch) and MediaPipe BlazeFace;
YuNet when the shared model exists. Slow ones run on every --slow-stride-th video frame.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_detectors.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer_ros.perception.detectors import make_detector  # noqa: E402
from fer_ros.perception.pipeline import ExpressionPipeline  # noqa: E402
from training.data import shared_path  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from bench_pipeline import letterbox  # noqa: E402


def read_video(path: Path) -> list[np.ndarray]:
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(letterbox(f))


def scene_cut(video: list[np.ndarray]) -> int:
    """First frame after the largest content jump (the face coming in); as test/conftest.py."""
    small = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (64, 36)).astype(np.float32) for f in video]
    diffs = [np.abs(a - b).mean() for a, b in zip(small[:-1], small[1:])]
    return int(np.argmax(diffs[: len(diffs) - 2])) + 1


class _NoClassifier:
    """ExpressionPipeline.detect never classifies; this stands in for the model."""

    model_path, backend = None, "none"


class _PipelineBefore16(ExpressionPipeline):
    """The pipeline as it was before issue 16: no holds, the same scan interval when empty."""

    EMPTY_SCAN_INTERVAL = 1_000_000


def pipeline_candidate(klass=ExpressionPipeline, **kw):
    """A stateful candidate: ExpressionPipeline.detect over consecutive frames."""
    pipe = klass(classifier=_NoClassifier(), **kw)

    class Run:
        stateful = True

        def reset(self):
            pipe.reset()

        def __call__(self, frame, stamp):
            return len(pipe.detect(frame, stamp))

    return Run()


def detector_candidate(det):
    class Run:
        stateful = False

        def reset(self):
            pass

        def __call__(self, frame, stamp):
            return len(det.detect(frame))

    return Run()


class MTCNNDetector:
    """facenet-pytorch's MTCNN (weights inside its wheel), CPU, boxes with p >= 0.9."""

    def __init__(self, min_face_size: int = 30):
        import torch
        from facenet_pytorch import MTCNN

        torch.set_num_threads(1)
        self.net = MTCNN(keep_all=True, device="cpu", min_face_size=min_face_size)

    def detect(self, frame):
        rgb = cv2.cvtColor(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2RGB)
        boxes, probs = self.net.detect(rgb)
        return [] if boxes is None else [b for b, p in zip(boxes, probs) if p >= 0.9]


class BlazeFaceDetector:
    """MediaPipe BlazeFace (full-range model from the mediapipe wheel, legacy solutions API)."""

    def __init__(self):
        import mediapipe as mp

        self.fd = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)

    def detect(self, frame):
        rgb = cv2.cvtColor(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2RGB)
        return self.fd.process(rgb).detections or []


def candidates(shared: Path):
    out = {
        "pipeline default (mtcnn)": lambda: pipeline_candidate(),
        # Haar (the default until 3 Dec) and its variants
        "pipeline haar": lambda: pipeline_candidate(detector="haar"),
        "pipeline haar before issue 16": lambda: pipeline_candidate(_PipelineBefore16, detector="haar", hold_frames=0),
        "pipeline haar, hold_frames=0": lambda: pipeline_candidate(detector="haar", hold_frames=0),
        "pipeline haar, full scan every frame": lambda: pipeline_candidate(detector="haar", detect_interval=1),
        "haar@320 scan": lambda: detector_candidate(make_detector("haar")),
        "haar@320 + profile scan": lambda: detector_candidate(make_detector("haar", profile=True)),
        "pipeline haar+profile": lambda: pipeline_candidate(detector="haar", detector_params={"profile": True}),
    }
    yunet = shared / "models" / "face_detection_yunet_2026may.onnx"
    if yunet.is_file():
        out["yunet@320 scan (user model)"] = lambda: detector_candidate(make_detector("yunet", model=str(yunet)))
    out["mtcnn@320 (pip mtcnn 1.0.0, torch)"] = lambda: detector_candidate(make_detector("mtcnn"))
    out["mtcnn (facenet-pytorch)"] = lambda: detector_candidate(MTCNNDetector())
    out["blazeface (mediapipe)"] = lambda: detector_candidate(BlazeFaceDetector())
    return out


def run_video(cand, video, fps: float, stride: int):
    cand.reset()
    found, ms = [], []
    for i in range(0, len(video), stride if not cand.stateful else 1):
        t0 = time.perf_counter()
        k = cand(video[i], i / fps)
        ms.append((time.perf_counter() - t0) * 1e3)
        found.append((i, k))
    return found, ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="candidate names (substrings) to run")
    ap.add_argument("--slow-stride", type=int, default=4, help="video frame stride for MTCNN/BlazeFace")
    ap.add_argument("--repeat", type=int, default=3, help="timing passes per candidate (the lowest p50 counts)")
    a = ap.parse_args()
    shared = shared_path()
    media = shared / "media"
    single = read_video(media / "single_face.mp4")
    late = read_video(media / "noface_face.mov")
    empty = read_video(media / "no_face.mp4")
    multi = cv2.imread(str(media / "multi_face.jpg"))
    jaffe = np.load(shared / "data" / "jaffe.npz")["images"]
    cut = scene_cut(late)
    print(f"frames: single_face {len(single)}, noface_face {len(late)} (face enters at frame {cut}: "
          f"largest content jump), no_face {len(empty)}; multi_face.jpg {multi.shape[1]}x{multi.shape[0]}; "
          f"JAFFE {len(jaffe)}")
    print(f"{'candidate':40s} {'single':>12s} {'after entry':>12s} {'before':>7s} {'no_face':>8s} "
          f"{'multi':>5s} {'jaffe':>7s} {'ms 1 face':>9s} {'ms 4 faces':>10s}")
    for name, build in candidates(shared).items():
        if a.only and not any(o in name for o in a.only):
            continue
        try:
            cand = build()
            cand(single[0], 0.0)  # warm-up (model load, first allocation)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
            print(f"{name:40s} not available: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}")
            continue
        slow = ("mtcnn" in name or "blaze" in name) and not cand.stateful  # pipelines see every frame
        stride = a.slow_stride if slow else 1
        f1, _ = run_video(cand, single, 30.0, stride)
        f2, _ = run_video(cand, late, 26.5, stride)
        f3, _ = run_video(cand, empty, 23.7, stride)
        after = [k > 0 for i, k in f2 if i >= cut]
        before = sum(k > 0 for i, k in f2 if i < cut)
        false = sum(k > 0 for _, k in f3)
        cand.reset()
        n_multi = cand(multi, 100.0)
        jaf = 0
        for img in jaffe:
            cand.reset()
            jaf += cand(img, 0.0) > 0
        rec1 = np.mean([k > 0 for _, k in f1])
        passes = 1 if slow else max(1, a.repeat)
        ms1 = min(np.percentile(run_video(cand, single, 30.0, stride)[1], 50) for _ in range(passes))
        four = [cv2.resize(multi, (640, 480), interpolation=cv2.INTER_AREA)] * (len(single) // stride)
        ms4 = min(np.percentile(run_video(cand, four, 30.0, 1)[1], 50) for _ in range(passes))
        print(f"{name:40s} {sum(k > 0 for _, k in f1):4d}/{len(f1):<3d} {rec1:4.0%} "
              f"{sum(after):4d}/{len(after):<3d} {np.mean(after):4.0%} {before:7d} {false:4d}/{len(f3):<3d} "
              f"{n_multi:5d} {jaf:3d}/{len(jaffe)} {ms1:9.2f} {ms4:10.2f}"
              + (f"  (every {stride}th video frame)" if stride > 1 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""The "mtcnn" detector (weights of the PyPI package mtcnn, networks in torch) against the
default Haar detector, in one process: ms per 640x480 frame (multi_face.jpg resized), median
of --runs runs after one warm-up, and the faces each finds.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/bench_mtcnn.py
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
from training.data import shared_path  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    import torch

    img = cv2.imread(str(shared_path() / "media" / "multi_face.jpg"))
    frame = cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA)
    print(f"640x480 frame from multi_face.jpg; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"median of {a.runs} runs")
    rows = [("haar, 320 px", make_detector("haar")),
            ("mtcnn, downscale_width 320", make_detector("mtcnn", downscale_width=320)),
            ("mtcnn, full resolution", make_detector("mtcnn", downscale_width=0))]
    for name, det in rows:
        det.detect(frame)  # warm-up (weights, first allocations)
        ms = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            faces = det.detect(frame)
            ms.append((time.perf_counter() - t0) * 1e3)
        print(f"{name:28s} {np.median(ms):8.1f} ms  (min {min(ms):.1f})  faces: {len(faces)} of 5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure ONNX Runtime CPU latency of candidate architectures (the shipped-model choice).

    python -m training.bench_arch --widths 1.0 0.75 --batch 8 --threads 2

Exports untrained MobileNetV1 variants to ONNX (latency does not depend on the weights) and
prints the median ms per batch and per face. Run on the target CPU while it is otherwise idle.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from training.export import export_onnx
from training.model import MobileNetV1


def bench_onnx(path, batch: int, threads: int, repeats: int = 200) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 1, 48, 48)).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        print(f"{'width':>6} {'batch':>5} {'ms/batch':>9} {'ms/face':>8}  (onnxruntime CPU, {a.threads} threads, median of {a.repeats})")
        for w in a.widths:
            m = MobileNetV1(width=w).eval()
            p = Path(td) / f"m{w}.onnx"
            export_onnx(m, p)
            for b in a.batch:
                ms = bench_onnx(p, b, a.threads, a.repeats)
                print(f"{w:>6} {b:>5} {ms:>9.3f} {ms / b:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Classifier latency on a CUDA GPU with PyTorch, eager vs CUDA graphs, FP32 vs FP16.

For machines without TensorRT: MobileNetV1 (training.model, the shipped model's architecture;
weights do not change the timing) on batches of 1, 8 and 32 faces. Each timed call is end to
end for a frame's faces: copy the normalised batch from pinned host memory, run, copy the
logits back and synchronise. The paper's figure to compare with is 3.57 ms per frame.

    python bench/bench_gpu.py [--width 1.0] [--iters 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def model_width(default: float) -> float:
    card = REPO / "fer_ros" / "models" / "model_card.json"
    try:
        cfg = json.loads(card.read_text())
        for key in ("width", "width_multiplier"):
            for holder in (cfg, cfg.get("architecture", {}) if isinstance(cfg.get("architecture"), dict) else {},
                           cfg.get("config", {}) if isinstance(cfg.get("config"), dict) else {}):
                if isinstance(holder.get(key), (int, float)):
                    return float(holder[key])
    except (OSError, ValueError, AttributeError):
        pass
    return default


def main() -> int:
    import torch

    from training.model import MobileNetV1

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=None, help="MobileNetV1 width (default: the model card's, else 1.0)")
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    width = args.width or model_width(1.0)
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}  cuda {torch.version.cuda}  cudnn {torch.backends.cudnn.version()}  "
          f"gpu {torch.cuda.get_device_name(0)}  MobileNetV1 width {width}")
    rng = np.random.default_rng(0)
    for dtype in (torch.float32, torch.float16):
        model = MobileNetV1(width=width).eval().to(dev, dtype=dtype)
        for n in (1, 8, 32):
            host = torch.from_numpy(rng.uniform(-1, 1, (n, 1, 48, 48)).astype(np.float32)).pin_memory()
            out_host = torch.empty((n, 7), dtype=torch.float32).pin_memory()
            static_in = torch.zeros((n, 1, 48, 48), device=dev, dtype=dtype)

            def eager():
                with torch.inference_mode():
                    static_in.copy_(host, non_blocking=True)
                    out_host.copy_(model(static_in).float(), non_blocking=True)
                torch.cuda.synchronize()

            # CUDA graph: capture once on a side stream after warm-up, then replay.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(5):
                    model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                static_out = model(static_in).float()

            def graphed():
                static_in.copy_(host, non_blocking=True)
                graph.replay()
                out_host.copy_(static_out, non_blocking=True)
                torch.cuda.synchronize()

            for name, fn in (("eager", eager), ("cuda graph", graphed)):
                for _ in range(30):
                    fn()
                ms = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    fn()
                    ms.append((time.perf_counter() - t0) * 1e3)
                ms = np.asarray(ms)
                print(f"{str(dtype).replace('torch.', ''):8s} {name:10s} batch {n:2d}: p50 {np.median(ms):6.3f} ms  "
                      f"p95 {np.percentile(ms, 95):6.3f} ms  ({np.median(ms) / n:6.3f} ms/face)")
            # graphs and eager agree (same weights, same input)
            with torch.inference_mode():
                static_in.copy_(host)
                ref = model(static_in).float()
                graph.replay()
                torch.cuda.synchronize()
                diff = float((static_out - ref).abs().max())
            print(f"{'':8s} max |graph - eager| logits: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

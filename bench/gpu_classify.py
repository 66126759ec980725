"""GPU classification latency of the FER MobileNetV1 (PyTorch CUDA, eager and CUDA graphs).

    python bench/gpu_classify.py [--checkpoint runs/stage1/best.pt] [--batches 1 8 32] [--json out.json]
    python -m bench.gpu_classify ...

Prints the median milliseconds per batch of 48x48 faces (host->device copy of the batch,
forward pass, logits back to the host), for float32 and bfloat16 autocast, eager and
replayed through a captured CUDA graph. The paper reports 3.57 ms per frame (detection +
classification) on its GPU; this times classification alone. Without CUDA it says so and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import torch
    from fer_ros.perception.preprocess import normalize
    from training.model import MobileNetV1, load_checkpoint
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="training checkpoint (default: untrained width-0.75 net)")
    ap.add_argument("--width", type=float, default=0.75)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (see bench/ for CPU benchmarks)")
        return 0
    dev = torch.device("cuda")
    model = (load_checkpoint(a.checkpoint) if a.checkpoint else MobileNetV1(width=a.width).eval()).to(dev)
    rng = np.random.default_rng(0)
    rows = []

    def timed(fn, x_host):
        for _ in range(20):
            fn(x_host)
        torch.cuda.synchronize()
        ts = []
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(a.repeats):
            s.record()
            fn(x_host)
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        return float(np.median(ts))

    for bs in a.batches:
        faces = rng.integers(0, 256, (bs, 48, 48), dtype=np.uint8)  # random pixels: timing only
        x_host = torch.from_numpy(normalize(faces)).pin_memory()
        for dtype in ("float32", "bfloat16"):
            amp = dtype == "bfloat16"

            def eager(xh):
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=amp):
                    return model(xh.to(dev, non_blocking=True)).float().cpu()

            static_in = torch.empty((bs, 1, 48, 48), device=dev)
            g = torch.cuda.CUDAGraph()
            with torch.inference_mode():
                st = torch.cuda.Stream()
                st.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(st), torch.autocast("cuda", torch.bfloat16, enabled=amp):
                    for _ in range(3):
                        model(static_in)
                torch.cuda.current_stream().wait_stream(st)
                with torch.cuda.graph(g), torch.autocast("cuda", torch.bfloat16, enabled=amp):
                    static_out = model(static_in).float()

            def graphed(xh):
                static_in.copy_(xh, non_blocking=True)
                g.replay()
                return static_out.cpu()

            # the graph computes the same function as eager (checked on this batch)
            diff = float((graphed(x_host) - eager(x_host)).abs().max())
            for mode, fn in (("eager", eager), ("cuda_graph", graphed)):
                ms = timed(fn, x_host)
                rows.append({"batch": bs, "dtype": dtype, "mode": mode, "ms_per_batch": ms, "ms_per_face": ms / bs,
                             "graph_vs_eager_max_abs_diff": diff})
    name = torch.cuda.get_device_name(dev)
    print(f"GPU classification, {name}, torch {torch.__version__}, median of {a.repeats} "
          f"(includes host->device copy and logits back to host)")
    print(f"{'batch':>5} {'dtype':>9} {'mode':>10} {'ms/batch':>9} {'ms/face':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['dtype']:>9} {r['mode']:>10} {r['ms_per_batch']:>9.3f} {r['ms_per_face']:>8.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows,
                                            "checkpoint": a.checkpoint}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Speed of one training step of the shipped architecture on this machine's CPU.

Prints the median ms per SGD step (forward, cross-entropy, backward, update; batch 64 of
1x48x48, MobileNetV1 width 0.75, train mode) in PyTorch's default (contiguous) memory format,
the baseline, and in channels_last, which `training.train` uses; the ratio between them; and
what that means for one FER-2013 epoch (28,709 faces, compute only: no augmentation or evaluation).

    .venv/bin/python bench/bench_train.py [--steps 40] [--threads 2] [--bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.model import MobileNetV1  # noqa: E402

FER_TRAIN = 28709


def step_ms(channels_last: bool, batch: int, steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = MobileNetV1(width=0.75, num_classes=7, dropout=0.5).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (batch,))
    times = []
    for _ in range(steps + 5):  # the first steps warm up oneDNN's kernels
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
    times = sorted(times[5:])
    return times[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (slower on CPUs without AMX)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch}, "
          f"{a.steps} steps, bf16 autocast {'on' if a.bf16 else 'off'}")
    base = step_ms(False, a.batch, a.steps, a.bf16)
    cl = step_ms(True, a.batch, a.steps, a.bf16)
    for name, ms in (("contiguous (baseline)", base), ("channels_last (training.train)", cl)):
        print(f"{name:32s} {ms:7.1f} ms/step  -> {ms * FER_TRAIN / a.batch / 1e3:5.1f} s per FER-2013 epoch")
    print(f"channels_last is {base / cl:.2f}x the baseline's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

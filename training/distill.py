"""Teacher logits for distillation: a checkpoint's test-time-averaged logits on every FER-2013
Training face, so a student can learn what the 12-view average knows from a single view. With
several checkpoints the teacher is their ensemble (the mean of their averaged logits). A member may
also be a teacher file this command saved (`.npy`): it counts as one member, so the mean of two
3-model teachers is the 6-model teacher without recomputing either.

    python -m training.distill runs/s1_ema/best.pt [more.pt|teacher.npy ...] --out runs/teacher_s1_ema.npy [--no-crops]
    python -m training.train --out runs/s1_kd --init runs/s1_ema/best.pt --distill runs/teacher_s1_ema.npy ...

The rows follow the training set's order as `training.train` loads it (FER-2013 split 0). A
`training.train --limit N` smoke run needs a teacher made with the same `--limit N`: train takes
exactly one row per training face.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from training import data as D
from training.model import load_checkpoint
from training.evaluate import predict_logits


def load_teacher(path, rows: int, classes: int, total: int | None = None) -> np.ndarray:
    """A teacher file's first `rows` logits (float32), checked against the training faces they
    describe: `rows` of them, or all `total` faces (a teacher of the whole set read by `--limit`)."""
    logits = np.load(path, allow_pickle=False)  # never unpickle: a teacher file is numbers only
    need = total or rows
    if logits.ndim != 2 or logits.shape[0] not in (need, rows) or logits.shape[1] != classes:
        raise ValueError(f"{path}: teacher logits {logits.shape}, need ({need}, {classes})")
    logits = logits[:rows].astype(np.float32)
    if not np.isfinite(logits).all():
        raise ValueError(f"{path}: teacher logits are not all finite")
    return logits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--crops", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--shared", default=None)
    ap.add_argument("--limit", type=int, default=0, help="only the first N training faces (smoke runs)")
    a = ap.parse_args(argv)
    full = D.fer2013("Training", a.shared)
    train = full.head(a.limit)
    saved = {}
    try:  # saved teachers are checked first, before minutes of inference
        for path in a.checkpoint:
            if path.endswith(".npy"):
                saved[path] = load_teacher(path, len(train), len(train.class_names), total=len(full))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    faces = train.faces48() if len(saved) < len(a.checkpoint) else None
    each = []
    for path in a.checkpoint:
        each.append(saved[path] if path in saved else predict_logits(
            load_checkpoint(path), faces, torch.device("cpu"), batch=512, flip=a.flip, crops=a.crops))
        print(f"{path}: accuracy on the training faces {float((each[-1].argmax(1) == train.labels).mean()):.4f}")
    logits = np.mean(each, axis=0)
    np.save(a.out, logits.astype(np.float32))
    acc = float((logits.argmax(1) == train.labels).mean())
    print(f"teacher logits {logits.shape} -> {a.out}; teacher accuracy on the training faces {acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

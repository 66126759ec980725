"""How test-time averaging changes a checkpoint's FER-2013 PublicTest accuracy.

    python -m training.tta_scan runs/s1_ema/best.pt [more checkpoints] [--scales 0.85 0.9 0.95]

For each crop scale, scores the face alone (1 view), with its mirror image (2, `flip_average`),
with its centre and four corner crops (6, `crop_average`) and both (12), through
`fer_ros.perception.preprocess.tta_views` (the classifier's views). The package uses scale 0.9
(`preprocess.TTA_CROP`, the middle of the 85-100% training crops); the other scales show how
much that choice matters. PublicTest is also the epoch-selection set, so small differences
between settings are not evidence.
"""

from __future__ import annotations

import argparse

import torch

from fer_ros.perception.preprocess import tta_view_count
from training import data as D
from training.model import load_checkpoint
from training.evaluate import view_logits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.85, 0.9, 0.95])
    ap.add_argument("--shared", default=None)
    a = ap.parse_args(argv)
    test = D.fer2013("PublicTest", a.shared)
    faces, y = test.faces48(), test.labels
    # view indices in tta_views order: the face and its crops (c views), then their mirror images
    c = tta_view_count(crops=True, flip=False)
    sets = {"1 (face)": [0], "2 (flip)": [0, c], f"{c} (crops)": list(range(c)),
            f"{2 * c} (flip+crops)": list(range(2 * c))}
    for path in a.checkpoints:
        model = load_checkpoint(path)
        print(path)
        for s in a.scales:
            lg = view_logits(model, faces, torch.device("cpu"), 512, flip=True, crops=True, scale=s)
            accs = {k: float((lg[v].mean(0).argmax(1) == y).mean()) for k, v in sets.items()}
            print(f"  crop scale {s:.2f}: " + "  ".join(f"{k} views {acc:.2%}" for k, acc in accs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

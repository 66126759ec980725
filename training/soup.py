"""Model soup: the uniform average of checkpoints fine-tuned along one line from a common start
(Wortsman et al. 2022, "Model soups"), then BatchNorm statistics recomputed as exact averages
over the clean FER-2013 Training faces (an average of weights needs its own statistics).

    python -m training.soup runs/s17/kd13/final.pt runs/s20/kd15/final.pt ... --out runs/soup/final.pt

Nothing is chosen on test data: the members and their weights (uniform) are the caller's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from training import data as D
from training.evaluate import recalibrate_bn
from training.model import load_checkpoint, save_checkpoint
from training.weights import WeightAverage


def soup(paths, recal_faces48: np.ndarray | None):
    """-> (model in eval mode, labels, averaged centres or None, {"train_config": the last member's,
    "soup_select": each member's epoch selection}). All members must share the network config and
    the class list; `recal_faces48` None keeps the averaged BN statistics."""
    if len(paths) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    avg, first, centers, cfg, select = WeightAverage(), None, [], {}, []
    for path in paths:
        model, ck = load_checkpoint(path, with_extra=True)
        if first is None:
            first = (model, ck["config"], list(ck["labels"]))
        elif ck["config"] != first[1] or list(ck["labels"]) != first[2]:
            raise ValueError(f"{path}: another network or class list than {paths[0]}; only like checkpoints average")
        avg.add(model)
        cfg = ck.get("train_config") or {}  # the last member's recipe, for the model card
        select.append(cfg.get("select"))
        c = ck.get("centers")
        centers.append(None if c is None else torch.as_tensor(c).float())
    model, _, labels = first
    model.load_state_dict(avg.state)
    if recal_faces48 is not None:
        recalibrate_bn(model, recal_faces48, torch.device("cpu"))
    model.eval()
    mean_centers = None if any(c is None for c in centers) else torch.stack(centers).mean(0)
    return model, labels, mean_centers, {"train_config": cfg, "soup_select": select}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-recal", action="store_true", help="keep the averaged BatchNorm statistics")
    ap.add_argument("--limit", type=int, default=0, help="recalibrate on the first N Training faces (tests)")
    ap.add_argument("--shared", default=None)
    a = ap.parse_args(argv)
    faces = None
    if not a.no_recal:
        faces = D.fer2013("Training", a.shared).head(a.limit).faces48()
    try:
        model, labels, centers, recipe = soup(a.checkpoint, faces)
    except (ValueError, OSError) as e:  # unlike or unreadable checkpoints: say which, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    extra = {**recipe,"soup_of": [str(Path(p)) for p in a.checkpoint],
             "bn_recalibrated_on": None if faces is None else f"{len(faces)} FER-2013 Training faces"}
    if centers is not None:
        extra["centers"] = centers
    save_checkpoint(a.out, model, labels=labels, **extra)
    print(f"soup of {len(a.checkpoint)} checkpoints -> {a.out}"
          + ("" if faces is None else f"; BatchNorm statistics from {len(faces)} Training faces"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Two models face to face on the same faces: is a difference in accuracy more than noise?

    python -m training.compare fer_ros/models/fer_mobilenet_v1.onnx runs/cand/fer_mobilenet_v1.onnx \
        [--views 1 2] [--json OUT]

For each test below, both models classify the same faces through `ExpressionClassifier`; the
report gives each one's accuracy, how many faces only A gets right and only B gets right, and the
exact two-sided McNemar p-value on those two counts (the faces both get right or both get wrong
say nothing about which is better). Tests, each with 1 and 2 (flip) views:

- FER-2013 PublicTest as it is, with the box 1.25x the FER-2013 frame, and with the centre shifted
  by +-8% of the side vertically (both directions pooled), as in `training.robustness`;
- JAFFE's 213 full images through the default detector and the calibrated crop (7 classes).

A shipping decision reads it beside the two models' cards: which figures differ beyond chance.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from training import data as D
from training.report import provenance
from training.results import BOX, CLEAN, SHIFT  # the test names training.results.candidate reads
from training.robustness import add_options, classifier, eval_sets, jaffe_predictions, predictions, reframe


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: P(a split at least this uneven | each discordant face a coin flip)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # int / int: exact for any n
    return min(1.0, 2.0 * tail)


def paired(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> dict:
    a, b = pa == y, pb == y
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return {"n": int(len(y)), "a": round(100 * float(a.mean()), 2), "b": round(100 * float(b.mean()), 2),
            "only_a": only_a, "only_b": only_b, "p": round(mcnemar_p(only_a, only_b), 4)}


def tests(faces: np.ndarray, y: np.ndarray):
    """(name, faces, labels) of the PublicTest conditions; a +-shift pools both directions."""
    yield CLEAN, faces, y
    yield BOX, reframe(faces, 1.25), y
    yield SHIFT, np.concatenate([reframe(faces, 1, 0, 0.08), reframe(faces, 1, 0, -0.08)]), \
        np.concatenate([y, y])


def run(model_a, model_b, shared, views=(1, 2), limit: int = 0, detector: str = "default") -> dict:
    faces, y, jaffe, framing = eval_sets(Path(shared), limit, detector)
    res = {"a": str(model_a), "b": str(model_b), "detector": detector, "views": {}}
    for v in views:
        clfs = [classifier(m, v) for m in (model_a, model_b)]
        r = {name: paired(yy, *(predictions(c, f) for c in clfs)) for name, f, yy in tests(faces, y)}
        if jaffe is not None:
            r["JAFFE through the pipeline"] = paired(jaffe[1], *(jaffe_predictions(c, jaffe, framing) for c in clfs))
        res["views"][str(v)] = r
    return res


def print_report(res: dict) -> None:
    print(f"A = {res['a']}\nB = {res['b']}")
    print(f"{'views':>5}  {'test':28}{'n':>6}{'A %':>8}{'B %':>8}{'only A':>8}{'only B':>8}{'McNemar p':>11}")
    for v, rows in res["views"].items():
        for name, r in rows.items():
            print(f"{v:>5}  {name:28}{r['n']:>6}{r['a']:>8.2f}{r['b']:>8.2f}{r['only_a']:>8}{r['only_b']:>8}{r['p']:>11.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_a", help="an .onnx model or a .pt training checkpoint (usually the shipped one)")
    ap.add_argument("model_b", help="the candidate")
    add_options(ap)
    a = ap.parse_args(argv)
    res = run(a.model_a, a.model_b, D.shared_path(a.shared), a.views, a.limit, a.detector)
    print_report(res)
    if a.json:
        res.update(provenance("training.compare", argv))
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

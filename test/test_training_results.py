"""training.results turns run directories into the docs/results.md tables: numbers come from
the result.json files, CV runs cut short are averaged over the folds that finished and marked."""

import json

import numpy as np

from training.report import metrics
from training.results import tables


def _write(path, obj):
    path.mkdir(parents=True, exist_ok=True)
    (path / "result.json").write_text(json.dumps(obj))


def _cv(accs, names):
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(names), 50)
    return {"kind": "cv", "k": 5, "folds": [{"fold": i, "accuracy": a} for i, a in enumerate(accs)],
            "mean_accuracy": float(np.mean(accs)), "std_accuracy": float(np.std(accs)),
            "pooled": metrics(y, y, names)}


def test_tables_from_run_directories(tmp_path):
    names = ["a", "b", "c"]
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    val = metrics(y, np.array([0, 1, 2, 0, 1, 2, 1, 0]), names)  # 6 of 8 right
    _write(tmp_path / "s1_center", {
        "config": {"schedule": "cosine", "lr": 0.01, "center_lambda": 0.001, "first_conv": "rgbsum"},
        "val": val, "history": [{}] * 100, "selected_epoch": 97, "train_seconds_this_run": 3720.4,
        "device_name": "cpu"})
    _write(tmp_path / "cv_ck6_2s_random", _cv([0.9, 0.95, 1.0, 0.85, 0.9], names))
    # a softmax-in-stage-2 CV that finished 2 of its 5 folds
    for i, pred in enumerate(([0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 0, 1, 2, 0, 0])):
        _write(tmp_path / "cv_ck6_2s_s2softmax_random" / f"fold{i}",
               {"val": metrics(y, np.array(pred), names), "class_names": names})
    _write(tmp_path / "cv_ck6_2s_random_lr0.01", _cv([0.8, 0.8, 0.8, 0.8, 0.8], names))
    md = tables(tmp_path)

    s1 = next(line for line in md.splitlines() if "(`s1_center`)" in line)
    assert "first conv rgbsum, cosine from lr 0.01" in s1 and "| 75.00 |" in s1 and "| 100 (97) |" in s1
    assert "3720 s on cpu" in s1 and s1.endswith("| 67.03 |")
    lines = md.splitlines()
    head = lines.index("| data | softmax % (stage 2 only, from the center-loss stage 1) | softmax + center loss % |")
    assert lines[head + 1] == "|---|---|---|" and lines[head + 2].startswith("| FER-2013 PublicTest | not run | 75.00")
    t3 = next(line for line in md.splitlines() if line.startswith("| CK+ 6-class, last frame | ")
              and "folds" in line and "±" in line.split("|")[2])
    # fold accuracies 100% and 87.5%: mean 93.75 ± 6.25, marked as 2 of 5 folds
    assert "93.75 ± 6.25 (2 of 5 folds)" in t3 and "92.00 ± 5.10 / F1 1.000" in t3
    assert "| JAFFE | random | not run | not run |" in md
    assert "| JAFFE → CK+ (6-class last frame) | | not run | | 72.49 |" in md
    # the run at another stage-2 lr gets a Table 2 column and a Table 5 row
    assert "| two-stage, stage-2 lr 0.01 % | paper (two-stage) % |" in md
    assert "| last frame, 6 classes, stage-2 lr 0.01 | 309 | 80.00 ± 0.00 / F1 1.000 | not run | 96.92 |" in md

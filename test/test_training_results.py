"""training.results turns run directories into the docs/results.md tables: numbers come from
the result.json files, CV runs cut short are averaged over the folds that finished and marked."""

import json
from pathlib import Path

import numpy as np
import pytest

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


def test_paper_tables_from_seed_runs(tmp_path, capsys):
    """`training.results paper`: per paper figure, mean and sd over the seed runs in percent, the
    folds, each run's command and commit, and the paper-style best-fold-best-epoch figure kept
    apart and labelled as chosen on the test fold."""
    from training import results as R

    def cv(name, accs, seed, hist):
        d = tmp_path / name
        for i, h in enumerate(hist):
            (d / f"fold{i}").mkdir(parents=True)
            (d / f"fold{i}" / "history.json").write_text(json.dumps([{"epoch": e + 1, "val_acc": a} for e, a in enumerate(h)]))
        (d / "result.json").write_text(json.dumps({
            "kind": "cv", "k": len(accs), "folds": [{"fold": i, "accuracy": a} for i, a in enumerate(accs)],
            "mean_accuracy": sum(accs) / len(accs), "std_accuracy": 0.0, "config": {"seed": seed, "inner_val": 0.0},
            "command": f"python -m training.experiments cv --seed {seed}", "commit": "abc1234"}))
        return d

    a = cv("ck_s0", [0.9, 0.8], 0, [[0.5, 0.95, 0.9], [0.7, 0.8]])
    b = cv("ck_s1", [1.0, 0.9], 1, [[0.6, 1.0], [0.9, 0.9]])
    x = tmp_path / "x_s0"
    x.mkdir()
    (x / "result.json").write_text(json.dumps({"kind": "cross", "test": {"accuracy": 0.5}, "config": {"seed": 0},
                                               "command": "c", "commit": "d"}))
    out = tmp_path / "paper.json"
    assert R.main(["paper", "--ck6", str(a), str(b), "--jaffe-to-ck6", str(x), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ck = res["ckplus6_last_frame_random_5fold"]
    assert ck["mean"] == pytest.approx(90.0) and ck["sd"] == pytest.approx(5.0) and ck["n_runs"] == 2
    assert ck["folds"] == [[90.0, 80.0], [100.0, 90.0]] and ck["paper"] == 96.92 and ck["epoch"] == "last"
    assert ck["paper_style_best_fold_best_epoch_selected_on_test_fold"] == pytest.approx(100.0)
    assert [r["commit"] for r in ck["runs"]] == ["abc1234"] * 2
    assert res["cross_jaffe_to_ckplus6"]["mean"] == pytest.approx(50.0)
    assert "jaffe_random_5fold" not in res  # nothing given, nothing claimed
    (tmp_path / "unfinished").mkdir()  # a run still training: an error that names it, no file written
    assert R.main(["paper", "--ck6", str(a), str(tmp_path / "unfinished"), "--out", str(tmp_path / "p2.json")]) == 2
    assert "unfinished (not a finished run?)" in capsys.readouterr().err and not (tmp_path / "p2.json").exists()


def test_sweep_groups_runs_by_setting(tmp_path):
    """`training.results sweep`: one mean ± sd per setting of the given config keys (the centre-loss
    lambda sweep), from the runs' own result files."""
    from training import results as R

    runs = []
    for lam, red, seed, acc in [(0.001, "mean", 0, 0.8), (0.001, "mean", 1, 0.9), (0.1, "sum", 0, 0.5)]:
        d = tmp_path / f"r_{lam}_{red}_{seed}"
        _write(d, {"kind": "cross", "test": {"accuracy": acc}, "command": "c", "commit": "k",
                   "config": {"seed": seed, "center_lambda": lam, "center_reduction": red}})
        runs.append(str(d))
    out = tmp_path / "sweep.json"
    assert R.main(["sweep", *runs, "--keys", "center_lambda", "center_reduction", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    first, second = res["settings"]
    assert (first["center_lambda"], first["center_reduction"], first["n_runs"]) == (0.001, "mean", 2)
    assert first["mean"] == pytest.approx(85.0) and first["sd"] == pytest.approx(5.0)
    assert (second["center_lambda"], second["mean"]) == (0.1, 50.0)
    assert res["command"].startswith("python -m training.results sweep")


def test_candidates_table_applies_the_shipping_rule_to_committed_comparisons(tmp_path, capsys):
    """`training.results candidates` reads `training.compare` files. Run 15 is ahead as a single view
    and at the loose box but behind with 2 views: it fails. Run 13 against run 11 ties at the 2-view
    box loss (3.15 both): the rule asks for less, so it fails until that loss is a hair smaller."""
    from training import results as R
    docs = Path(__file__).resolve().parents[1] / "docs" / "results"
    r15 = json.loads((docs / "compare_run13_run15.json").read_text())
    c = R.candidate(r15)
    assert c["b"]["1"]["clean"] > c["a"]["1"]["clean"] and c["b"]["2"]["clean"] < c["a"]["2"]["clean"]
    assert c["a"]["1"]["box_loss"] == pytest.approx(r15["views"]["1"][R.CLEAN]["a"] - r15["views"]["1"][R.BOX]["a"])
    assert not c["passes"]
    r13 = json.loads((docs / "compare_run11_run13.json").read_text())
    c = R.candidate(r13)
    assert c["a"]["2"]["box_loss"] == c["b"]["2"]["box_loss"] and not c["passes"]
    r13["views"]["2"][R.BOX]["b"] += 0.01
    assert R.candidate(r13)["passes"]
    (tmp_path / "r13.json").write_text(json.dumps(r13))
    assert R.main(["candidates", str(docs / "compare_run13_run15.json"), str(tmp_path / "r13.json"),
                   "--names", "run 15", "run 13"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| shipped (") and "| 67.79 | 69.49 | +1.70 | 2.12 / 3.15 |" in rows[2]
    assert rows[3].startswith("| run 15 | 68.12 | 69.18 |") and rows[3].endswith("| no |")
    assert rows[4].startswith("| shipped (") and "| 66.56 | 68.04 |" in rows[4]  # another shipped model: its own row
    assert rows[5].startswith("| run 13 | 67.79 | 69.49 | +1.70 | 2.12 / 3.14 |") and rows[5].endswith("| **yes** |")


def test_the_candidates_table_in_the_results_page_is_what_its_command_prints():
    """docs/results.md shows the command beside its stage-1 candidates table: running that command
    on the committed comparisons must print the table as the page has it, header included."""
    import re
    import shlex
    from training import results as R
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "results.md").read_text()
    cmd = re.search(r"`python -m training\.results\s+candidates\s+([^`]+)`", page)
    assert cmd, "docs/results.md no longer names the candidates command"
    args = shlex.split(cmd.group(1))
    files = args[:args.index("--names")]
    names = args[args.index("--names") + 1:]
    table = R.candidates_table([root / f for f in files], names)
    assert table.replace(str(root) + "/", "") in page

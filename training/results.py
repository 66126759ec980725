"""Collect a campaign's result.json files into the markdown tables of docs/results.md.

    python -m training.results runs/gpu > /tmp/tables.md
    python -m training.results runs/cpu --json docs/results/summary.json --prefix cpu3   # + numbers
    # the honest paper figures, one entry per paper number, each from its runs (one per training seed)
    python -m training.results paper --fer fer_ros/models/model_card.json --ck6 runs/s2/ck6_seed{0,1,2,3} \
        --jaffe runs/s2/jaffe_seed{0,1,2,3} --ck6-subject ... --jaffe-subject ... \
        --jaffe-to-ck6 runs/s2/x_jaffe_ck6_seed{0,1,2,3} --ck6-to-jaffe ... --out docs/results/paper_tables.json
    # stage-1 candidates against the shipped model (files of `training.compare --views 1 2 --json`)
    python -m training.results candidates docs/results/compare_run13_run1*.json [--names ...]

Paper numbers (Miao et al., ACM TOMM 2019) are the ones quoted in the project's issue; "—"
where the reproduction has no paper figure to set beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CK_N = {"small6": 309, "small7": 327, "large6": 927, "large7": 981}  # images per CK+48 setup
PAPER = {"fer": "67.03", "ck6_small": "96.92", "jaffe": "95.24", "jaffe_to_ck": "72.49", "ck_to_jaffe": "50.27"}


def _load(p: Path):
    f = p / "result.json"
    if f.exists():
        return json.loads(f.read_text())
    return _partial_cv(p)


def _partial_cv(p: Path):
    """A CV run cut short (time limit): aggregate the folds that finished, marked as partial."""
    import numpy as np
    from training.report import metrics
    folds = sorted(p.glob("fold*/result.json"))
    if not folds:
        return None
    rs = [json.loads(f.read_text()) for f in folds]
    accs = [r["val"]["accuracy"] for r in rs]
    cm = np.sum([np.array(r["val"]["confusion"]) for r in rs], axis=0)
    yt = np.repeat(np.repeat(np.arange(len(cm))[:, None], len(cm), 1).ravel(), cm.ravel())
    yp = np.repeat(np.tile(np.arange(len(cm)), len(cm)), cm.ravel())
    names = rs[0]["class_names"]
    return {"kind": "cv", "k": 5, "n": None, "folds": [{"fold": f.parent.name, "accuracy": a} for f, a in zip(folds, accs)],
            "mean_accuracy": float(np.mean(accs)), "std_accuracy": float(np.std(accs)),
            "pooled": metrics(yt, yp, names), "partial": True}


def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"


def cvcell(r):
    if r is None:
        return "not run"
    nf = len(r["folds"])
    s = f"{pct(r['mean_accuracy'])} ± {pct(r['std_accuracy'])}"
    return s + (f" ({nf} of {r['k']} folds)" if nf < r["k"] else "") + f" / F1 {r['pooled']['macro_f1']:.3f}"


def tables(runs: Path) -> str:
    out = []
    s1 = {n: _load(runs / n) for n in ("s1_center", "s1_softmax", "s1_rgbsum", "s1_cosine")}
    s1 = {n: r for n, r in s1.items() if r is not None}
    out += ["### Stage 1: FER-2013 (train on Training, select on PublicTest)", "",
            "| run | PublicTest acc. % | macro F1 | epochs run (selected) | train time | paper |",
            "|---|---|---|---|---|---|"]
    for n, r in s1.items():
        c = r["config"]
        sched = ("cosine" if c["schedule"] == "cosine" else "x0.94/15 ep.") + f" from lr {c['lr']:g}"
        d = (("softmax + center loss" if c["center_lambda"] > 0 else "softmax only")
             + f", first conv {c['first_conv']}, {sched}")
        v = r["val"]
        out.append(f"| {d} (`{n}`) | {pct(v['accuracy'])} | {v['macro_f1']:.3f} | {len(r['history'])} "
                   f"({r['selected_epoch']}) | {r['train_seconds_this_run']:.0f} s on {r['device_name']} | "
                   f"{PAPER['fer'] if n == 's1_center' else '—'} |")
    cv = lambda n: _load(runs / n)  # noqa: E731
    out += ["", "### Table 2: one-stage (ImageNet → target) vs two-stage (ImageNet → FER-2013 → target), 5-fold CV",
            "", "| dataset | folds | one-stage % | two-stage % | paper (two-stage) % |", "|---|---|---|---|---|"]
    alt = sorted(p.name.rsplit("_lr", 1)[1] for p in runs.glob("cv_ck6_2s_random_lr*"))
    if alt:
        out[-2] = out[-2].replace("| paper", f"| two-stage, stage-2 lr {alt[0]} % | paper")
        out[-1] += "---|"
    for tag, name, paper in (("ck6", "CK+ 6-class, last frame", PAPER["ck6_small"]), ("jaffe", "JAFFE", PAPER["jaffe"])):
        for by in ("random", "subject"):
            extra = f" {cvcell(cv(f'cv_{tag}_2s_{by}_lr{alt[0]}'))} |" if alt else ""
            out.append(f"| {name} | {by} | {cvcell(cv(f'cv_{tag}_1s_{by}'))} | {cvcell(cv(f'cv_{tag}_2s_{by}'))} |"
                       f"{extra} {paper if by == 'random' else '—'} |")
    s2only = any(runs.glob("cv_*_2s_s2softmax_random"))  # softmax in stage 2 only, same stage-1 model
    sm_head = "softmax % (stage 2 only, from the center-loss stage 1)" if s2only else "softmax %"
    out += ["", "### Table 3: softmax vs softmax + center loss (two-stage; CV with random folds)", "",
            f"| data | {sm_head} | softmax + center loss % |", "|---|---|---|"]
    sm, ce = s1.get("s1_softmax"), s1.get("s1_center")
    out.append(f"| FER-2013 PublicTest | {pct(sm['val']['accuracy']) if sm else 'not run'} | "
               f"{pct(ce['val']['accuracy']) if ce else 'not run'} |")
    for tag, name in (("ck6", "CK+ 6-class, last frame"), ("jaffe", "JAFFE")):
        sm = cv(f"cv_{tag}_2s_{'s2softmax' if s2only else 'softmax'}_random")
        out.append(f"| {name} | {cvcell(sm)} | {cvcell(cv(f'cv_{tag}_2s_random'))} |")
    out += ["", "### Table 5: CK+ setups (two-stage, 5-fold CV)", "",
            "| setup | images | random folds % | subject-independent % | paper % |", "|---|---|---|---|---|"]
    for setup, nm in (("small6", "last frame, 6 classes"), ("small7", "last frame, 7 (+contempt)"),
                      ("large6", "last 3 frames, 6 classes"), ("large7", "last 3 frames, 7 (+contempt)")):
        key = "ck6" if setup == "small6" else f"ck{setup}"
        paper = PAPER["ck6_small"] if setup == "small6" else "—"
        out.append(f"| {nm} | {CK_N[setup]} | {cvcell(cv(f'cv_{key}_2s_random'))} | "
                   f"{cvcell(cv(f'cv_{key}_2s_subject'))} | {paper} |")
        for lr in alt:  # the same setup at another stage-2 learning rate, where it was run
            rr, rs = cv(f"cv_{key}_2s_random_lr{lr}"), cv(f"cv_{key}_2s_subject_lr{lr}")
            if rr or rs:
                out.append(f"| {nm}, stage-2 lr {lr} | {CK_N[setup]} | {cvcell(rr)} | {cvcell(rs)} | {paper} |")
    out += ["| 8 classes (+neutral) | — | cannot be formed from CK+48 (no neutral onset frames) | | — |"]
    out += ["", "### Cross-dataset (two-stage model trained on all of the source)", "",
            "| train → test | test images | accuracy % | macro F1 | paper % |", "|---|---|---|---|---|"]
    for n, nm, paper in (("cross_jaffe_to_ck6", "JAFFE → CK+ (6-class last frame)", PAPER["jaffe_to_ck"]),
                         ("cross_ck6_to_jaffe", "CK+ (6-class) → JAFFE (6 shared classes)", PAPER["ck_to_jaffe"])):
        r = cv(n)
        out.append(f"| {nm} | {r['n_test'] if r else ''} | {pct(r['test']['accuracy']) if r else 'not run'} | "
                   f"{r['test']['macro_f1']:.3f} | {paper} |" if r else f"| {nm} | | not run | | {paper} |")
    return "\n".join(out) + "\n"


def summary(runs: Path, prefix: str) -> dict:
    """Compact per-run numbers for docs/results/summary.json, keyed '<prefix>/<run>'."""
    out = {}
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        r = _load(d)
        if r is None:
            continue
        if r.get("kind") == "cross":
            t = r["test"]
            row = {"kind": "cross", "n_test": r["n_test"], "classes": r["classes"], "accuracy": t["accuracy"],
                   "macro_f1": t["macro_f1"], "confusion": t["confusion"]}
        elif r.get("kind") == "cv":
            pooled = r["pooled"]
            row = {"kind": "cv", "folds_done": len(r["folds"]), "fold_accuracy": [f["accuracy"] for f in r["folds"]],
                   "mean_accuracy": r["mean_accuracy"], "std_accuracy": r["std_accuracy"],
                   **{f"pooled_{k}": pooled[k] for k in ("macro_f1", "macro_precision", "macro_recall")},
                   "pooled_confusion": pooled["confusion"], "class_names": pooled["class_names"]}
        elif "val" in r:  # stage 1
            v = r["val"]
            row = {"kind": "stage1", **{k: v[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall")},
                   "epochs_run": len(r["history"]), "selected_epoch": r["selected_epoch"],
                   "train_seconds": r["train_seconds_this_run"], "device": r["device_name"], "config": r["config"],
                   "history": r["history"]}
        else:
            continue
        out[f"{prefix}/{d.name}"] = row
    return out


PAPER_KEYS = {  # paper_tables.json key -> (CLI option, paper figure %)
    "ckplus6_last_frame_random_5fold": ("ck6", 96.92), "jaffe_random_5fold": ("jaffe", 95.24),
    "ckplus6_by_subject_5fold": ("ck6_subject", None), "jaffe_by_subject_5fold": ("jaffe_subject", None),
    "cross_jaffe_to_ckplus6": ("jaffe_to_ck6", 72.49), "cross_ckplus6_to_jaffe": ("ck6_to_jaffe", 50.27),
}


def _best_fold_best_epoch(run: Path):
    """The paper-style figure: the best test fold at its best epoch (chosen ON the test fold)."""
    best = None
    for h in sorted(run.glob("fold*/history.json")):
        accs = [r["val_acc"] for r in json.loads(h.read_text()) if "val_acc" in r]
        if accs:
            best = max(best or 0.0, max(accs))
    return best


def paper_entry(runs: list[Path]) -> dict:
    """Mean and sd over runs (training seeds) of each run's figure, in percent, with the folds,
    commands and commits; for CVs also the paper-style best fold at its best epoch."""
    import numpy as np

    missing = [str(r) for r in runs if not (Path(r) / "result.json").is_file()]
    if missing:
        raise ValueError(f"no result.json in {', '.join(missing)} (not a finished run?)")
    rs = [json.loads((Path(r) / "result.json").read_text()) for r in runs]
    kinds = {r.get("kind") for r in rs}
    if len(kinds) != 1 or kinds - {"cv", "cross", "stage1"}:
        raise ValueError(f"{runs}: expected finished CV, cross-dataset or stage-1 runs of one kind, got {kinds}")
    kind = kinds.pop()
    key = {"cv": lambda r: r["mean_accuracy"], "cross": lambda r: r["test"]["accuracy"],
           "stage1": lambda r: r["val"]["accuracy"]}[kind]  # stage 1: PublicTest, the selected epoch
    vals = [100 * key(r) for r in rs]
    out = {"mean": round(float(np.mean(vals)), 2), "sd": round(float(np.std(vals)), 2), "n_runs": len(rs),
           "runs": [{"run": str(p), "accuracy": round(v, 2), "command": r.get("command"), "commit": r.get("commit"),
                     "seed": r["config"].get("seed")} for p, r, v in zip(runs, rs, vals)]}
    if kind == "cv":
        out["folds"] = [[round(100 * f["accuracy"], 2) for f in r["folds"]] for r in rs]
        selected_inner = any(r["config"].get("inner_val") for r in rs)
        out["epoch"] = "chosen on an inner validation split of the training folds" if selected_inner else "last"
        if not selected_inner:
            best = [b for b in (_best_fold_best_epoch(Path(p)) for p in runs) if b is not None]
            if best:
                out["paper_style_best_fold_best_epoch_selected_on_test_fold"] = round(100 * max(best), 2)
    return out


def paper_tables(fer_card: Path | None, groups: dict) -> dict:
    out = {}
    if fer_card:
        card = json.loads(Path(fer_card).read_text())
        tta = card["scores"]["fer2013_publictest_by_test_time_averaging"]
        out["fer2013_publictest_single_view"] = round(100 * tta["none"]["accuracy"], 2)
        out["fer2013_publictest_2_views"] = round(100 * tta["flip"]["accuracy"], 2)
        out["fer2013_source"] = {"model_card": str(fer_card), "command": card["training"]["command"],
                                 "sha256": card["sha256"]}
    for key, (opt, paper) in PAPER_KEYS.items():
        if groups.get(opt):
            out[key] = {**paper_entry([Path(r) for r in groups[opt]]), "paper": paper}
    return out


def sweep(runs: list[Path], keys: list[str]) -> dict:
    """Runs grouped by the values of config `keys` (e.g. center_lambda, center_reduction): per
    setting the mean and sd over its runs (seeds) in percent, with each run's command and commit."""
    groups: dict = {}
    for p in runs:
        r = json.loads((Path(p) / "result.json").read_text())
        setting = tuple(r["config"].get(k) for k in keys)
        groups.setdefault(setting, []).append(Path(p))
    rows = []
    for setting, paths in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        rows.append({**dict(zip(keys, setting)), **paper_entry(paths)})
    return {"keys": keys, "settings": rows}


CLEAN, BOX, SHIFT = "PublicTest", "PublicTest, box 1.25x", "PublicTest, shift y +-8%"


def candidate(compare_json: dict) -> dict:
    """One `training.compare --views 1 2` result -> for model a (shipped) and b (candidate): clean
    accuracy and what the 1.25x box and the +-8% vertical shift cost, with 1 and 2 views; and
    whether b passes the shipping rule: ahead clean with 1 and with 2 views, and losing less at
    the 1.25x box with 1 and with 2 views."""
    v = compare_json["views"]
    out = {}
    for m in ("a", "b"):
        out[m] = {n: {"clean": v[n][CLEAN][m], "box_loss": round(v[n][CLEAN][m] - v[n][BOX][m], 2),
                      "shift_loss": round(v[n][CLEAN][m] - v[n][SHIFT][m], 2)} for n in ("1", "2")}
    out["passes"] = all(out["b"][n]["clean"] > out["a"][n]["clean"] and out["b"][n]["box_loss"] < out["a"][n]["box_loss"]
                        for n in ("1", "2"))
    return out


def candidates_table(files: list[Path], names: list[str] | None = None) -> str:
    """Markdown: the shipped model's row, then one row per candidate with the rule's verdict
    (`names`: a label per file; default the candidate's path)."""
    def row(label, r, verdict):
        one, two = r["1"], r["2"]
        return (f"| {label} | {one['clean']:.2f} | {two['clean']:.2f} | {two['clean'] - one['clean']:+.2f} "
                f"| {one['box_loss']:.2f} / {two['box_loss']:.2f} "
                f"| {one['shift_loss']:.2f} / {two['shift_loss']:.2f} | {verdict} |")
    lines = ["| model | 1 view | 2 views | the mirror adds | box 1.25x costs (1 / 2 views) "
             "| shift y ±8% costs (1 / 2 views) | passes the shipping rule |", "|---|---|---|---|---|---|---|"]
    shipped = None
    for i, f in enumerate(files):
        d = json.loads(Path(f).read_text())
        name = names[i] if names else d["b"]
        c = candidate(d)
        if d["a"] != shipped:
            shipped = d["a"]
            lines.append(row(f"shipped ({shipped})", c["a"], "—"))
        lines.append(row(name, c["b"], "**yes**" if c["passes"] else "no"))
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except ValueError as e:  # an unfinished or mixed run folder: say which, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:
        ap = argparse.ArgumentParser(prog="python -m training.results sweep",
                                     description="one figure per setting of --keys over finished runs")
        ap.add_argument("runs", nargs="+", help="run folders (CV or cross-dataset runs of one kind)")
        ap.add_argument("--keys", nargs="+", required=True, help="config keys that define a setting")
        ap.add_argument("--out", required=True)
        a = ap.parse_args(argv[1:])
        res = sweep([Path(r) for r in a.runs], a.keys)
        res["command"] = "python -m training.results " + " ".join(argv)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        for row in res["settings"]:
            setting = ", ".join(f"{k}={row[k]}" for k in a.keys)
            print(f"{setting}: {row['mean']:.2f} ± {row['sd']:.2f} ({row['n_runs']} runs)")
        return 0
    if argv[:1] == ["candidates"]:
        ap = argparse.ArgumentParser(prog="python -m training.results candidates",
                                     description="stage-1 candidates against the shipped model, from training.compare files")
        ap.add_argument("files", nargs="+", help="JSON files of `training.compare --views 1 2 --json`")
        ap.add_argument("--names", nargs="+", default=None, help="a label per file (default: the candidate's path)")
        a = ap.parse_args(argv[1:])
        if a.names and len(a.names) != len(a.files):
            raise ValueError(f"{len(a.names)} names for {len(a.files)} files")
        print(candidates_table([Path(f) for f in a.files], a.names))
        return 0
    if argv[:1] == ["paper"]:
        ap = argparse.ArgumentParser(prog="python -m training.results paper",
                                     description="write docs/results/paper_tables.json from finished runs")
        ap.add_argument("--fer", default=None, help="model_card.json of the stage-1 model")
        for opt, _ in PAPER_KEYS.values():
            ap.add_argument(f"--{opt.replace('_', '-')}", dest=opt, nargs="+", default=[], help="run folders, one per seed")
        ap.add_argument("--out", default="docs/results/paper_tables.json")
        a = ap.parse_args(argv[1:])
        res = paper_tables(a.fer, {opt: getattr(a, opt) for opt, _ in PAPER_KEYS.values()})
        res["command"] = "python -m training.results " + " ".join(argv)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        for k, v in res.items():
            if isinstance(v, dict) and "mean" in v:
                print(f"{k}: {v['mean']:.2f} ± {v['sd']:.2f} ({v['n_runs']} runs; paper {v['paper']})")
            elif isinstance(v, float):
                print(f"{k}: {v:.2f}")
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="?", default="runs/gpu")
    ap.add_argument("--json", default=None, help="also merge the runs' numbers into this summary JSON file")
    ap.add_argument("--prefix", default=None, help="key prefix in --json (default: the runs folder's name)")
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    print(tables(runs))
    if a.json:
        f = Path(a.json)
        data = json.loads(f.read_text()) if f.exists() else {}
        data.update(summary(runs, a.prefix or runs.name))
        f.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

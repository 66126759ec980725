"""Stage 2 and the paper's tables: 5-fold cross-validation on CK+ / JAFFE, cross-dataset tests.

    # two-stage (ImageNet -> FER-2013 -> JAFFE), paper's random folds and subject-independent folds
    python -m training.experiments cv --dataset jaffe --init runs/stage1/best.pt --by random --out runs/cv/jaffe_2s_random
    python -m training.experiments cv --dataset jaffe --init runs/stage1/best.pt --by subject --out runs/cv/jaffe_2s_subject
    # one-stage (ImageNet -> CK+), softmax only, CK+ "large" 7-class
    python -m training.experiments cv --dataset ckplus:large7 --init imagenet --center-lambda 0 --out runs/cv/ck_large7_1s
    # cross-dataset: train on all of JAFFE, test on CK+ (small6)
    python -m training.experiments cross --source jaffe --target ckplus:small6 --init runs/stage1/best.pt --out runs/cross/jaffe_to_ck
    # score finished CV runs' fold models again with 12-view test-time averaging (no retraining)
    python -m training.experiments rescore --dataset jaffe --flip --crops runs/cv/jaffe_2s_random
    # how much choosing the epoch on the test folds would add (a ceiling, not a result)
    python -m training.experiments ceiling runs/cv/jaffe_2s_random

Datasets: `fer2013`, `jaffe`, `ckplus:<setup>` with setup in training.data.CK_SETUPS. Within a
fold the model of the last epoch is tested (no selection on the test fold). Each run writes
result.json (per-fold and pooled metrics), confusion.png and a loss-curve PNG per fold.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from fer_ros.perception.classifier import softmax
from fer_ros.perception.preprocess import tta_view_count
from training import data as D
from training.report import metrics, plot_confusion, write_json
from training.report import provenance as report_provenance
from training.evaluate import evaluate, pick_device, predict_logits
from training.train import TrainConfig, train_model

STAGE2 = dict(lr=0.045, epochs=30, bn_recal=True)


def provenance() -> dict:
    return report_provenance("training.experiments")


def load_dataset(name: str, shared=None) -> D.FaceSet:
    root = D.shared_path(shared) / "data"
    if name == "jaffe":
        return D.load_jaffe(root / "jaffe.npz")
    if name.startswith("ckplus"):
        setup = name.split(":", 1)[1] if ":" in name else "small6"
        return D.load_ckplus48(root / "ckplus48.npz", setup)
    if name == "fer2013":
        return D.load_fer2013(root / "fer2013.npz")
    raise ValueError(f"unknown dataset {name!r}: use jaffe, ckplus:<setup> or fer2013")


def training_groups(fs: D.FaceSet, train_idx, train_fs: D.FaceSet) -> D.FaceSet:
    """The samples of `train_fs` from the groups (CK+ sequences) of fs[train_idx]: e.g. all
    three last frames of the training sequences while the folds test on last frames only.
    Both sets must come from the same file, so that group ids name the same sequences."""
    if train_fs.group is None or fs.group is None:
        raise ValueError("training on other frames needs group ids (CK+ sequences) in both sets")
    if tuple(train_fs.class_names) != tuple(fs.class_names):
        raise ValueError(f"training classes {train_fs.class_names} differ from the test classes {fs.class_names}")
    return train_fs.subset(np.flatnonzero(np.isin(train_fs.group, fs.group[train_idx])))


def inner_split(fs: D.FaceSet, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of a training fold: about `fraction` of each class held out,
    whole groups (CK+ sequences) at a time so no sequence is on both sides."""
    rng = np.random.default_rng([seed, 7])
    units = fs.group if fs.group is not None else np.arange(len(fs))
    val = []
    for c in np.unique(fs.labels):
        us = np.unique(units[fs.labels == c])
        rng.shuffle(us)
        val.extend(us[:max(1, int(round(fraction * len(us))))])
    is_val = np.isin(units, val)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def run_cv(fs: D.FaceSet, cfg: TrainConfig, out, by: str = "random", k: int = 5, fold_seed: int = 0,
           folds=None, train_fs: D.FaceSet | None = None) -> dict:
    """k-fold CV: train on k-1 folds, test the last-epoch model on the held-out fold (or, with
    cfg.inner_val, the epoch that scores best on a validation split of the training folds).
    With `train_fs`, folds are still formed (and tested) on `fs`, but each fold trains on the
    samples of `train_fs` from its training groups (training_groups)."""
    out = Path(out)
    per_fold, y_all, p_all = [], [], []
    for i, test_idx in enumerate(D.kfold(fs, k, by, fold_seed)):
        if folds is not None and i not in folds:
            continue
        train_idx = np.setdiff1d(np.arange(len(fs)), test_idx)
        train = fs.subset(train_idx) if train_fs is None else training_groups(fs, train_idx, train_fs)
        fcfg = TrainConfig(**{**asdict(cfg), "seed": cfg.seed + i})
        test = fs.subset(test_idx)
        if cfg.inner_val > 0:  # choose the epoch on part of the training folds; test once
            tr, va = inner_split(train, cfg.inner_val, fcfg.seed)
            model, res = train_model(train.subset(tr), train.subset(va), fcfg, out=out / f"fold{i}",
                                     quiet=True, select=True, save_last=False)
            m, _ = evaluate(model, test, pick_device(cfg.device), flip=cfg.eval_flip, crops=cfg.eval_crops)
            write_json({**res, "val": m, "inner_val": res["val"]}, out / f"fold{i}" / "result.json")
        else:
            _, res = train_model(train, test, fcfg, out=out / f"fold{i}", quiet=True, select=False, save_last=False)
            m = res["val"]
        per_fold.append({"fold": i, "n_train": len(train), "n_test": len(test_idx), "accuracy": m["accuracy"],
                         "selected_epoch": res.get("selected_epoch"),
                         "macro_f1": m["macro_f1"],
                         "test_subjects": sorted(set(fs.subject[test_idx].tolist())) if by == "subject" else None})
        y_all.append(fs.labels[test_idx])
        p_all.append(np.array(m["confusion"]))
        for f in ("last.pt", "best.pt"):  # keep the run directory small: final.pt is the fold's model
            (out / f"fold{i}" / f).unlink(missing_ok=True)
    if folds is not None:
        # Only some folds ran (completing a run cut short): the whole CV is summarised from
        # every fold*/result.json in `out` by training.results, so write no partial summary.
        return {"kind": "cv-folds", "folds": per_fold}
    cm = sum(p_all)
    # pooled metrics from the summed confusion matrix
    yt = np.repeat(np.repeat(np.arange(len(cm))[:, None], len(cm), 1).ravel(), cm.ravel())
    yp = np.repeat(np.tile(np.arange(len(cm)), len(cm)), cm.ravel())
    pooled = metrics(yt, yp, fs.class_names)
    accs = [f["accuracy"] for f in per_fold]
    res = {"kind": "cv", "by": by, "k": k, "fold_seed": fold_seed, "n": len(fs), "counts": fs.counts(),
           "train_setup": train_fs.info.get("setup", train_fs.info.get("source")) if train_fs is not None else None,
           "class_names": list(fs.class_names), "config": asdict(cfg), "folds": per_fold,
           "mean_accuracy": float(np.mean(accs)), "std_accuracy": float(np.std(accs)),
           "pooled": pooled, "info": {k2: v for k2, v in fs.info.items() if k2 != "boxes"}, **provenance()}
    write_json(res, out / "result.json")
    plot_confusion(pooled, out / "confusion.png",
                   title=f"{out.name}: {np.mean(accs):.2%} +- {np.std(accs):.2%} ({by} {k}-fold)")
    return res


def run_cross(src: D.FaceSet, tgt: D.FaceSet, cfg: TrainConfig, out) -> dict:
    """Train on all of `src`, test on the `tgt` images of classes both share (argmax over those)."""
    out = Path(out)
    model, res = train_model(src, None, cfg, out=out / "train", quiet=True, select=False, save_last=False)
    shared = [c for c in src.class_names if c in tgt.class_names]
    t = tgt.relabel(src.class_names)
    cols = [src.class_names.index(c) for c in shared]
    logits = predict_logits(model, t.faces48(), pick_device(cfg.device), flip=cfg.eval_flip, crops=cfg.eval_crops)
    pred = np.array(cols)[logits[:, cols].argmax(1)]
    m = metrics(t.labels, pred, src.class_names)
    r = {"kind": "cross", "classes": shared, "n_test": len(t), "n_train": len(src), "config": asdict(cfg),
         "test": m, **provenance()}
    for f in ("last.pt", "best.pt"):
        (out / "train" / f).unlink(missing_ok=True)
    write_json(r, out / "result.json")
    plot_confusion(m, out / "confusion.png", title=f"{out.name}: {m['accuracy']:.2%} on {len(t)} images")
    return r


def fold_logits(fs: D.FaceSet, run, flip: bool, crops: bool, device: str = "cpu") -> tuple[dict, list]:
    """A finished CV run's result.json and, per fold, (test indices, logits of its fold*/final.pt on
    them), the folds rebuilt from the run's own k, grouping and fold seed."""
    from training.model import load_checkpoint

    run = Path(run)
    r = json.loads((run / "result.json").read_text())
    if r.get("kind") != "cv" or r["n"] != len(fs) or r["class_names"] != list(fs.class_names):
        raise ValueError(f"{run} is not a CV run of this dataset ({len(fs)} faces, {list(fs.class_names)})")
    folds = []
    for i, test_idx in enumerate(D.kfold(fs, r["k"], r["by"], r["fold_seed"])):
        if len(test_idx) != r["folds"][i]["n_test"]:
            raise ValueError(f"{run}: fold {i} has {len(test_idx)} faces now, {r['folds'][i]['n_test']} then")
        model = load_checkpoint(run / f"fold{i}" / "final.pt").to(device)
        folds.append((test_idx, predict_logits(model, fs.subset(test_idx).faces48(), torch.device(device),
                                               flip=flip, crops=crops)))
    return r, folds


def rescore_cv(fs: D.FaceSet, run, flip: bool, crops: bool, device: str = "cpu") -> dict:
    """Score a finished CV run's fold models (fold*/final.pt) again with other test-time
    averaging, on the same folds (rebuilt from the run's result.json), without retraining.
    Writes run/rescore_<views>.json."""
    r, folds = fold_logits(fs, run, flip, crops, device)
    accs = [float((logits.argmax(1) == fs.labels[idx]).mean()) for idx, logits in folds]
    views = tta_view_count(crops=crops, flip=flip)
    out = {"run": str(run), "flip": flip, "crops": crops, "views_per_face": views, "fold_accuracy": accs,
           "mean_accuracy": float(np.mean(accs)), "std_accuracy": float(np.std(accs)),
           "trained_with": {k: r["config"].get(k) for k in ("eval_flip", "eval_crops")},
           "mean_accuracy_as_trained": r["mean_accuracy"]}
    write_json(out, Path(run) / f"rescore_{views}views.json")
    return out


def ensemble_cv(fs: D.FaceSet, runs, flip: bool = False, crops: bool = False, device: str = "cpu") -> dict:
    """Several finished CV runs on the same folds (same k, grouping and fold seed: runs that differ
    only in their training seed or options) scored as one ensemble: each test face gets the mean
    of the fold models' softmax probabilities. Nothing is chosen on the test folds; it is an
    ensemble of len(runs) networks, to be reported apart from single models."""
    members, per_run = [], []
    for run in runs:
        r, folds = fold_logits(fs, run, flip, crops, device)
        members.append((r["k"], r["by"], r["fold_seed"]))
        per_run.append(folds)
    if len(set(members)) != 1:
        raise ValueError(f"the runs do not share their folds (k, grouping, fold seed): {members}")
    accs, member_accs = [], []
    for i in range(len(per_run[0])):
        idx = per_run[0][i][0]
        probs = [softmax(np.asarray(f[i][1], np.float64)) for f in per_run]
        accs.append(float((np.mean(probs, axis=0).argmax(1) == fs.labels[idx]).mean()))
        member_accs.append([float((p.argmax(1) == fs.labels[idx]).mean()) for p in probs])
    members_mean = [float(np.mean(a)) for a in zip(*member_accs)]
    return {"kind": "ensemble_cv", "runs": [str(r) for r in runs], "members": len(runs), "flip": flip,
            "crops": crops, "views_per_face": tta_view_count(crops=crops, flip=flip), "fold_accuracy": accs,
            "mean_accuracy": float(np.mean(accs)), "std_accuracy": float(np.std(accs)),
            "member_mean_accuracy": members_mean, **provenance()}


def epoch_ceiling(run) -> dict:
    """From a CV run's fold*/history.json: the mean test-fold accuracy of the last epoch (what the
    run reports) and of the best epoch of each fold. The second picks epochs on the test folds, so
    it is not a result: it bounds what any epoch-selection rule could reach with these models."""
    run = Path(run)
    if (run / "result.json").exists() and json.loads((run / "result.json").read_text())["config"].get("inner_val"):
        raise ValueError(f"{run}: its fold histories score an inner validation split, not the test folds")
    hist = [json.loads(p.read_text()) for p in sorted(run.glob("fold*/history.json"))]
    if not hist or any("val_acc" not in h[-1] for h in hist):
        raise ValueError(f"{run}: no fold histories with test-fold accuracy")
    last = [h[-1]["val_acc"] for h in hist]
    best = [max(r["val_acc"] for r in h if "val_acc" in r) for h in hist]
    return {"run": str(run), "folds": len(hist), "last_epoch": float(np.mean(last)),
            "best_epoch_per_fold": float(np.mean(best))}


def _cfg_from_args(a) -> TrainConfig:
    base = {**asdict(TrainConfig()), **STAGE2}
    for f in fields(TrainConfig):
        v = getattr(a, f.name, None)
        if v is not None:
            base[f.name] = v
    return TrainConfig(**base)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cv = sub.add_parser("cv", help="k-fold cross-validation")
    cv.add_argument("--dataset", required=True)
    cv.add_argument("--by", choices=("random", "subject"), default="random")
    cv.add_argument("--k", type=int, default=5)
    cv.add_argument("--fold-seed", type=int, default=0)
    cv.add_argument("--folds", type=int, nargs="*", default=None, help="run only these folds (smoke runs)")
    cv.add_argument("--train-dataset", default=None,
                    help="train each fold on this dataset's samples of the training sequences (e.g. ckplus:large6 "
                         "with --dataset ckplus:small6: all three last frames, tested on last frames)")
    cr = sub.add_parser("cross", help="train on one dataset, test on another")
    cr.add_argument("--source", required=True)
    cr.add_argument("--target", required=True)
    for p in (cv, cr):
        p.add_argument("--out", required=True)
        p.add_argument("--shared", default=None)
        p.add_argument("--init", default="imagenet", help="imagenet, scratch, or a stage-1 checkpoint (two-stage)")
        for f in fields(TrainConfig):
            if f.name in ("init", "shared", "progress"):
                continue
            t = type(f.default)
            if t is bool:
                p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None)
            else:
                p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=t, default=None)
    rs = sub.add_parser("rescore", help="score finished CV runs again with other test-time averaging")
    rs.add_argument("--dataset", required=True)
    rs.add_argument("--shared", default=None)
    rs.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    rs.add_argument("--crops", action=argparse.BooleanOptionalAction, default=True)
    rs.add_argument("runs", nargs="+", help="CV run directories (with result.json and fold*/final.pt)")
    en = sub.add_parser("ensemble", help="score finished CV runs on the same folds as one ensemble")
    en.add_argument("--dataset", required=True)
    en.add_argument("--shared", default=None)
    en.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False)
    en.add_argument("--crops", action=argparse.BooleanOptionalAction, default=False)
    en.add_argument("--json", default=None, help="write the result here")
    en.add_argument("runs", nargs="+", help="CV run directories (with result.json and fold*/final.pt)")
    ce = sub.add_parser("ceiling", help="last-epoch accuracy vs the best epoch of each test fold (an upper bound)")
    ce.add_argument("runs", nargs="+", help="CV run directories (with fold*/history.json)")
    a = ap.parse_args(argv)
    if a.cmd == "ceiling":
        for run in a.runs:
            r = epoch_ceiling(run)
            print(f"{run}: last epoch {r['last_epoch']:.4f}, best epoch per test fold {r['best_epoch_per_fold']:.4f}"
                  f" ({r['folds']} folds)")
        return 0
    if a.cmd == "rescore":
        fs = load_dataset(a.dataset, a.shared)
        for run in a.runs:
            r = rescore_cv(fs, run, a.flip, a.crops)
            print(f"{run}: {r['views_per_face']} views {r['mean_accuracy']:.4f} +- {r['std_accuracy']:.4f}"
                  f" (as trained: {r['mean_accuracy_as_trained']:.4f})")
        return 0
    if a.cmd == "ensemble":
        r = ensemble_cv(load_dataset(a.dataset, a.shared), a.runs, a.flip, a.crops)
        if a.json:
            write_json(r, a.json)
        print(f"{a.dataset}: ensemble of {r['members']} runs, {r['views_per_face']} view(s): "
              f"{r['mean_accuracy']:.4f} +- {r['std_accuracy']:.4f} over folds; the members alone "
              + ", ".join(f"{m:.4f}" for m in r["member_mean_accuracy"]))
        return 0
    cfg = _cfg_from_args(a)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.cmd == "cv":
        fs = load_dataset(a.dataset, a.shared)
        train_fs = load_dataset(a.train_dataset, a.shared) if a.train_dataset else None
        r = run_cv(fs, cfg, a.out, a.by, a.k, a.fold_seed, a.folds, train_fs)
        if a.folds is not None:
            print(f"{a.dataset} {a.by}: folds {[(f['fold'], round(f['accuracy'], 4)) for f in r['folds']]} -> {a.out}")
            return 0
        print(f"{a.dataset} {a.by} {a.k}-fold: {r['mean_accuracy']:.4f} +- {r['std_accuracy']:.4f} "
              f"(pooled macro F1 {r['pooled']['macro_f1']:.4f}) -> {a.out}")
    else:
        r = run_cross(load_dataset(a.source, a.shared), load_dataset(a.target, a.shared), cfg, a.out)
        print(f"{a.source} -> {a.target}: {r['test']['accuracy']:.4f} on {r['n_test']} images -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

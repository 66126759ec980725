"""Evaluation metrics and report files: accuracy, macro precision/recall/F1, confusion
matrix, and PNG plots (confusion matrix, loss/accuracy curves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    """Counts [n, n]: row = true class, column = predicted class."""
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def metrics(y_true, y_pred, class_names) -> dict:
    """accuracy, macro precision/recall/F1 (over classes present in y_true), per-class, confusion."""
    n = len(class_names)
    cm = confusion(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    pred_n, true_n = cm.sum(0), cm.sum(1)
    prec = np.divide(tp, pred_n, out=np.zeros(n), where=pred_n > 0)
    rec = np.divide(tp, true_n, out=np.zeros(n), where=true_n > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(n), where=(prec + rec) > 0)
    present = true_n > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_precision": float(prec[present].mean()),
        "macro_recall": float(rec[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(class_names, prec, rec, f1, true_n)},
        "class_names": list(class_names),
        "confusion": cm.tolist(),
    }


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(m: dict, path, title: str = "") -> None:
    plt = _plt()
    cm = np.array(m["confusion"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = m["class_names"]
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(names), 0.8 + 0.7 * len(names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {m['accuracy']:.2%}, macro F1 {m['macro_f1']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: list[dict], path, title: str = "") -> None:
    """Loss and accuracy per epoch (train and validation where present)."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, name in ((a, "loss", "loss"), (b, "acc", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], label="train")
        if history and f"val_{key}" in history[0]:
            ax.plot(ep, [h[f"val_{key}"] for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(obj, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=_default))


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)

"""Evaluation metrics and report files: accuracy, macro precision/recall/F1, confusion
matrix, and PNG plots (confusion matrix, loss/accuracy curves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fer_ros.perception.metrics import confusion, metrics  # noqa: F401 - one home, used from here


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


def git_commit() -> str | None:
    """The repository's short HEAD commit, stamped on result files beside their command (None outside git)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(module: str, argv=None) -> dict:
    """The command line (`python -m module ...`; argv defaults to sys.argv[1:]) and the commit that produce a
    result file, for the docs' numbers."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    return {"command": f"python -m {module} " + " ".join(args), "commit": git_commit()}


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

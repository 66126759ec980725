"""Classification metrics, one home for training reports and bag evaluation: confusion matrix,
per-class precision/recall/F1 (0 where undefined), accuracy and macro averages."""

from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    """Counts [n, n]: row = true class, column = predicted class (class indices)."""
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def _scores(cm: np.ndarray):
    """precision, recall, F1 (0 where undefined) and support per class of a confusion matrix."""
    n = len(cm)
    tp = np.diag(cm).astype(float)
    pred_n, true_n = cm.sum(0), cm.sum(1)
    prec = np.divide(tp, pred_n, out=np.zeros(n), where=pred_n > 0)
    rec = np.divide(tp, true_n, out=np.zeros(n), where=true_n > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(n), where=(prec + rec) > 0)
    return prec, rec, f1, true_n


def per_class(cm: np.ndarray, class_names) -> dict:
    """{class: {precision, recall, f1, support}} of a confusion matrix."""
    return {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(class_names, *_scores(np.asarray(cm)))}


def metrics(y_true, y_pred, class_names) -> dict:
    """accuracy, macro precision/recall/F1 (over classes present in y_true), per-class, confusion."""
    cm = confusion(y_true, y_pred, len(class_names))
    prec, rec, f1, true_n = _scores(cm)
    present = true_n > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(np.diag(cm).astype(float).sum() / max(cm.sum(), 1)),
        "macro_precision": float(prec[present].mean()),
        "macro_recall": float(rec[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": per_class(cm, class_names),
        "class_names": list(class_names),
        "confusion": cm.tolist(),
    }

"""Evaluation of a network on uint8 faces: test-time views (the classifier's own), metrics,
BatchNorm re-estimation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fer_ros.perception.preprocess import TTA_CROP, normalize, tta_view_count, tta_views
from training import data as D
from training.report import metrics


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def view_logits(model, faces48: np.ndarray, device, batch: int = 1024, flip: bool = False, crops: bool = False,
                scale: float = TTA_CROP) -> np.ndarray:
    """Logits [V, N, C] of every test-time view of uint8 faces (`preprocess.tta_views` order:
    the face, its crops, then the mirror images of all of them)."""
    model.eval()
    out = []
    for i in range(0, len(faces48), batch):
        views = tta_views(faces48[i:i + batch], crops=crops, flip=flip, scale=scale)  # [V, n, 48, 48]
        x = torch.from_numpy(normalize(views.reshape(-1, *views.shape[2:]))).to(device)
        logits = torch.cat([model(x[j:j + batch]).float() for j in range(0, len(x), batch)])
        out.append(logits.reshape(len(views), -1, logits.shape[1]).cpu())
    if not out:
        return np.zeros((tta_view_count(crops, flip), 0, model.num_classes), np.float32)
    return torch.cat(out, dim=1).numpy()


def predict_logits(model, faces48: np.ndarray, device, batch: int = 1024, flip: bool = False,
                   with_plain: bool = False, crops: bool = False):
    """Logits for uint8 faces; flip/crops average them over the test-time views of each face
    (`preprocess.tta_views`, what ExpressionClassifier(flip_average, crop_average) computes).
    with_plain=True also returns the logits of the faces alone."""
    lg = view_logits(model, faces48, device, batch, flip=flip, crops=crops)
    return (lg.mean(0), lg[0]) if with_plain else lg.mean(0)


def evaluate(model, fs: D.FaceSet, device, class_names=None, flip: bool = False, with_plain: bool = False,
             crops: bool = False):
    """(metrics, mean cross-entropy) on a FaceSet (no augmentation); with_plain=True adds the
    accuracy without flip averaging (same forward passes) as a third element."""
    logits, plain = predict_logits(model, fs.faces48(), device, flip=flip, with_plain=True, crops=crops)
    y = fs.labels
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()) if len(y) else 0.0
    m = metrics(y, logits.argmax(1), class_names or fs.class_names)
    return (m, loss, float((plain.argmax(1) == y).mean()) if len(y) else 0.0) if with_plain else (m, loss)


@torch.no_grad()
def recalibrate_bn(model, faces48: np.ndarray, device, batch: int = 256) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over `faces48` (no
    augmentation), so evaluation uses statistics of the final weights. Used for the small
    stage-2 sets, where a few hundred steps at a high learning rate outrun the running means."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was = model.training
    model.train()
    for i in range(0, len(faces48), batch):
        x = torch.from_numpy(normalize(faces48[i:i + batch])).to(device)
        if len(x) > 1:
            model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)

"""Loss terms of training: softmax cross-entropy (optionally label-smoothed and distilled
from a teacher) and center loss (Wen et al., ECCV 2016)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CenterLoss(nn.Module):
    """Center loss of Wen et al. (ECCV 2016), added to cross-entropy with weight lambda:
    reduction "mean": L_C = 1/(2m) * sum_i ||x_i - c_{y_i}||^2 over a batch of m features (as
    their Caffe layer normalises it); "sum": 1/2 * sum_i ||x_i - c_{y_i}||^2 (the formula as
    printed in their paper and Miao et al.'s, m times stronger for the same lambda).
    The centres are NOT trained by the optimiser: after each step they move by Wen's rule
    c_j <- c_j - alpha * sum_{i: y_i=j} (c_j - x_i) / (1 + n_j)."""

    def __init__(self, num_classes: int, dim: int, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"center loss reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.centers[labels].to(feats.dtype)
        d = 0.5 * ((feats - c) ** 2).sum(1)
        return d.mean() if self.reduction == "mean" else d.sum()

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor, alpha: float) -> None:
        feats = feats.detach().float()
        k = self.centers.shape[0]
        diff = self.centers[labels] - feats  # c_{y_i} - x_i
        num = torch.zeros_like(self.centers).index_add_(0, labels, diff)
        n = torch.bincount(labels, minlength=k).to(feats.dtype)
        self.centers -= alpha * num / (1.0 + n)[:, None]


def classification_loss(logits, y, label_smoothing: float = 0.0, teacher=None, distill_weight: float = 0.5,
                        distill_t: float = 2.0):
    """Cross-entropy; with teacher logits, (1-w) * CE + w * T^2 * KL(teacher_T || student_T)."""
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if teacher is None:
        return ce
    t = distill_t
    kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                  reduction="batchmean") * t * t
    return (1 - distill_weight) * ce + distill_weight * kd

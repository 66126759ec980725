"""Averaged and interpolated weights: an exponential moving average during training, a uniform
average of late epochs (stochastic weight averaging) and interpolation towards the weights a
fine-tuning started from (WiSE-FT, Wortsman et al. 2022)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class WeightEMA:
    """Exponential moving average of a model's weights and BatchNorm statistics (Polyak
    averaging). Evaluated instead of the raw weights, it averages out the noise of the last
    SGD steps, which on FER-2013 swings PublicTest accuracy by a point from epoch to epoch."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._float = [(e, m) for e, m in pairs if e.dtype.is_floating_point]
        self._other = [(e, m) for e, m in pairs if not e.dtype.is_floating_point]  # BN step counters

    @torch.no_grad()
    def update(self) -> None:
        ema, cur = [e for e, _ in self._float], [m for _, m in self._float]
        torch._foreach_lerp_(ema, cur, 1.0 - self.decay)
        for e, m in self._other:
            e.copy_(m)


class WeightAverage:
    """Uniform average of the weights seen at each `add` (late epochs), BatchNorm statistics
    included; recalibrate BN on the training faces after loading it, as for any average."""

    def __init__(self):
        self.n = 0
        self.state: dict | None = None

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        sd = {k: v.detach().float().cpu().clone() if v.dtype.is_floating_point else v.detach().cpu().clone()
              for k, v in model.state_dict().items()}
        self.n += 1
        if self.state is None:
            self.state = sd
            return
        for k, v in sd.items():
            if v.dtype.is_floating_point:
                self.state[k] += (v - self.state[k]) / self.n
            else:
                self.state[k] = v


@torch.no_grad()
def interpolate(model: nn.Module, start: dict, alpha: float) -> None:
    """Move `model` to (1 - alpha) * start + alpha * model, tensor by tensor (floating ones;
    keys missing from `start` or of another shape keep the model's values)."""
    for k, v in model.state_dict().items():
        s = start.get(k)
        if s is not None and v.dtype.is_floating_point and s.shape == v.shape:
            v.copy_(torch.lerp(s.to(v.device, v.dtype), v, alpha))

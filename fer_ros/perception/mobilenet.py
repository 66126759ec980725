"""MobileNetV1 for 1x48x48 grayscale faces and the safe reading of its checkpoints.

The network is the standard MobileNetV1 (Howard et al. 2017) body with a width multiplier,
a 1-channel first convolution, global average pooling, dropout 0.5 and a linear classifier.
`forward(x, return_features=True)` also returns the pooled feature, which center loss uses.

It lives in the core because the classifier's torch backend rebuilds a training checkpoint
without importing `training` (docs/CONTRACTS.md); training.model re-exports it and adds the
ImageNet initialisation and checkpoint writing. Imported only where torch is wanted: torch is
optional at run time.

A checkpoint is read with `torch.load(weights_only=True)`: tensors and plain Python data only,
so a crafted file cannot run code while it is read (a full pickle can, even one then rejected).
"""

from __future__ import annotations

import pickle
import re

import torch
import torch.nn as nn

from fer_ros import LABELS

#: (output channels at width 1.0, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
BN_EPS = 1e-3  # Keras' BatchNorm epsilon: keeps the converted ImageNet statistics exact.
# PyTorch's default. Keras' 0.99 (0.01 here) let the running statistics lag far behind the
# weights when fine-tuning on a few hundred images (measured: test accuracy of a CK+ fold
# jumping between 16% and 74% from epoch to epoch while training accuracy stayed ~90%).
BN_MOMENTUM = 0.1


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def _ch(c: int, width: float) -> int:
    return int(c * width)


class _DepthwiseMatmul(torch.autograd.Function):
    """y[n,c] = M[c] @ x[n,c] for flattened maps, with the two gradients as plain einsums."""

    @staticmethod
    def forward(ctx, x, m):
        ctx.save_for_backward(x, m)
        return torch.einsum("cpq,ncq->ncp", m, x)

    @staticmethod
    def backward(ctx, g):
        x, m = ctx.saved_tensors
        g = g.contiguous()
        return torch.einsum("cpq,ncp->ncq", m, g), torch.einsum("ncp,ncq->cpq", g, x)


class DepthwiseConv(nn.Conv2d):
    """A 3x3 depthwise convolution (stride 1, padding 1). On a tiny map (2x2: the last block
    on a 48x48 face) training computes it as one small matrix per channel: the same numbers,
    but PyTorch's CPU depthwise backward takes about 5x longer there (bench/bench_train.py).
    Inference and ONNX export use the ordinary convolution; the parameters are the same."""

    SMALL = 4  # at most this many pixels per map

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self._taps = {}

    def _taps_for(self, h: int, w: int) -> torch.Tensor:
        """[9, (h*w)^2] 0/1: which kernel tap links input pixel q to output pixel p."""
        if (h, w) not in self._taps:
            e = torch.zeros(9, (h * w) ** 2)
            for i in range(h):
                for j in range(w):
                    for k in range(h):
                        for m in range(w):
                            a, b = k - i + 1, m - j + 1
                            if 0 <= a < 3 and 0 <= b < 3:
                                e[a * 3 + b, (i * w + j) * h * w + k * w + m] = 1.0
            self._taps[(h, w)] = e
        return self._taps[(h, w)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if (h * w > self.SMALL or not torch.is_grad_enabled() or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export()):
            return super().forward(x)
        p = h * w
        m = (self.weight.reshape(c, 9) @ self._taps_for(h, w).to(x.device, x.dtype)).reshape(c, p, p)
        y = _DepthwiseMatmul.apply(x.reshape(n, c, p).contiguous(), m)
        return y.reshape(n, c, h, w).contiguous(memory_format=torch.channels_last)


class MobileNetV1(nn.Module):
    """MobileNetV1(width) for [N, in_ch, 48, 48] inputs in [-1, 1]; returns logits [N, classes].

    final_stride=1 drops the last downsampling (block 12): a 48x48 face then ends as a 3x3 map
    instead of 2x2, for about a third more arithmetic. The weights (and ImageNet init) are the same."""

    def __init__(self, width: float = 1.0, num_classes: int = len(LABELS), in_channels: int = 1,
                 dropout: float = 0.5, final_stride: int = 2):
        super().__init__()
        self.width, self.num_classes, self.in_channels, self.dropout_p = width, num_classes, in_channels, dropout
        self.final_stride = int(final_stride)
        c0 = _ch(32, width)
        layers = [nn.Conv2d(in_channels, c0, 3, 2, 1, bias=False), _bn(c0), nn.ReLU6(inplace=True)]
        cin = c0
        for i, (c, s) in enumerate(BLOCKS):
            s = self.final_stride if i == len(BLOCKS) - 2 else s
            c = _ch(c, width)
            dw = DepthwiseConv(cin) if s == 1 else nn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False)
            layers += [dw, _bn(cin), nn.ReLU6(inplace=True),
                       nn.Conv2d(cin, c, 1, bias=False), _bn(c), nn.ReLU6(inplace=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.feature_dim = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.pool(self.features(x)).flatten(1)
        logits = self.classifier(self.drop(f))
        return (logits, f) if return_features else logits

    def config(self) -> dict:
        cfg = {"arch": "mobilenet_v1", "width": self.width, "num_classes": self.num_classes,
               "in_channels": self.in_channels, "dropout": self.dropout_p}
        if self.final_stride != 2:  # older checkpoints have no such key
            cfg["final_stride"] = self.final_stride
        return cfg


# What a checkpoint's "config" may ask for: the file is untrusted, so it must not be able to
# allocate an arbitrarily large network before its weights are even checked.
CONFIG_LIMITS = {"width": (0.05, 4.0), "num_classes": (1, 1000), "in_channels": (1, 4),
                 "dropout": (0.0, 0.99), "final_stride": (1, 2)}


def build(config: dict) -> MobileNetV1:
    """The (untrained) network a checkpoint's "config" describes; ValueError on anything else."""
    if not isinstance(config, dict):
        raise ValueError(f"a network config must be a dict, got {type(config).__name__}")
    cfg = dict(config)
    if cfg.pop("arch", "mobilenet_v1") != "mobilenet_v1":
        raise ValueError(f"unknown architecture {config.get('arch')!r}")
    for key, value in cfg.items():
        if key not in CONFIG_LIMITS:
            raise ValueError(f"unknown network config key {key!r} (known: {', '.join(CONFIG_LIMITS)})")
        lo, hi = CONFIG_LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"network config {key}={value!r} outside {lo}..{hi}")
    return MobileNetV1(**cfg)


def read_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint file -> its dict ({"config", "state_dict", "labels", ...}), read with
    weights_only=True. ValueError names the file when it holds anything else."""
    try:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False; name only what was refused.
        found = re.search(r"Unsupported (?:global|operand)[^.]*", str(exc))
        raise ValueError(f"{path}: refused: it holds Python objects besides tensors and plain data, and "
                         "loading those could run code; save checkpoints with training.model.save_checkpoint "
                         f"({found.group(0)[:200] if found else 'not a weights-only file'})") from None
    except Exception as exc:  # noqa: BLE001 - truncated file, not a torch file, ...
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a fer_ros training checkpoint (needs 'config' and 'state_dict')")
    return ckpt


def from_checkpoint(path, map_location="cpu") -> tuple[MobileNetV1, dict]:
    """Rebuild the network of a checkpoint -> (model in eval mode, the checkpoint dict)."""
    ckpt = read_checkpoint(path, map_location)
    model = build(ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: weights do not fit the network its config describes: {str(exc)[:300]}") from None
    return model.eval(), ckpt

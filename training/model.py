"""MobileNetV1 for 1x48x48 grayscale faces, ImageNet initialisation, checkpoint I/O.

The network is the standard MobileNetV1 (Howard et al. 2017) body with a width multiplier,
a 1-channel first convolution, global average pooling, dropout 0.5 and a linear classifier.
`forward(x, return_features=True)` also returns the pooled feature, which center loss uses.

Checkpoints written by `training.train` are plain dicts (see `save_checkpoint`); the
inference side loads one with `load_checkpoint(path) -> nn.Module` (eval mode, CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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

    # Keras layer name of each conv/bn module, in order, for the ImageNet conversion.
    def keras_names(self):
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        bns = [m for m in self.features if isinstance(m, nn.BatchNorm2d)]
        names = ["conv1"]
        for i in range(1, len(BLOCKS) + 1):
            names += [f"conv_dw_{i}", f"conv_pw_{i}"]
        return list(zip(names, convs, bns))


def load_imagenet(model: MobileNetV1, npz_path, first_conv: str = "fresh") -> dict:
    """Copy Keras ImageNet MobileNetV1 weights into `model` (transposed to PyTorch layout).

    first_conv: "fresh" keeps the random first convolution (the paper's choice: its input is
    48x48 gray, not 224x224 RGB); "rgbsum" sums the RGB kernel over its input channels,
    which is exactly the RGB network applied to a gray image replicated into 3 channels.
    Layers missing from the file (conv_pw_13 in the width-1.0 file) stay fresh. Returns
    {"loaded": [...], "fresh": [...]} layer names.
    """
    if first_conv not in ("fresh", "rgbsum"):
        raise ValueError(f"first_conv must be 'fresh' or 'rgbsum', got {first_conv!r}")
    w = np.load(npz_path)
    loaded, fresh = [], []
    for name, conv, bn in model.keras_names():
        kkey = f"{name}__depthwise_kernel" if name.startswith("conv_dw") else f"{name}__kernel"
        if kkey in w:
            k = w[kkey]
            if name.startswith("conv_dw"):  # HWC1 -> C,1,H,W
                t = k.transpose(2, 3, 0, 1)
            else:  # HWIO -> OIHW
                t = k.transpose(3, 2, 0, 1)
            if name == "conv1":
                if first_conv == "rgbsum" and model.in_channels == 1:
                    t = t.sum(axis=1, keepdims=True)
                    conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(t)))
                    loaded.append(name)
                elif model.in_channels == t.shape[1]:
                    conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(t)))
                    loaded.append(name)
                else:
                    fresh.append(name)
            else:
                if tuple(conv.weight.shape) != t.shape:
                    raise ValueError(f"{kkey}: shape {t.shape} does not fit {tuple(conv.weight.shape)} "
                                     f"(width {model.width} vs this weight file?)")
                conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(t)))
                loaded.append(name)
        else:
            fresh.append(name)
        bkey = f"{name}_bn__"
        if bkey + "gamma" in w and (name != "conv1" or name in loaded):
            bn.weight.data.copy_(torch.from_numpy(w[bkey + "gamma"]))
            bn.bias.data.copy_(torch.from_numpy(w[bkey + "beta"]))
            bn.running_mean.copy_(torch.from_numpy(w[bkey + "moving_mean"]))
            bn.running_var.copy_(torch.from_numpy(w[bkey + "moving_variance"]))
        # a fresh conv keeps fresh BN too: the ImageNet statistics belong to the ImageNet kernel
    return {"loaded": loaded, "fresh": fresh}


def default_imagenet_path(width: float, shared: Path) -> Path:
    name = ("mobilenet_v1_1.0_224_imagenet_keras_partial.npz" if width == 1.0
            else f"mobilenet_v1_{width:g}_224_imagenet_keras.npz")
    return Path(shared) / "weights" / name


def build(config: dict) -> MobileNetV1:
    cfg = dict(config)
    if cfg.pop("arch", "mobilenet_v1") != "mobilenet_v1":
        raise ValueError(f"unknown architecture {config.get('arch')!r}")
    return MobileNetV1(**cfg)


def save_checkpoint(path, model, labels=None, **extra) -> None:
    """Write {"config", "state_dict", "labels", **extra} atomically (tmp file + rename).
    `labels`: the class of each classifier row (default: fer_ros.LABELS, for 7-class models only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels is None:
        if model.num_classes != len(LABELS):
            raise ValueError(f"a {model.num_classes}-class model needs its labels to be saved")
        labels = LABELS
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels for a {model.num_classes}-class model")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": model.config(), "state_dict": sd, "labels": [str(c) for c in labels], **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path, map_location="cpu", with_extra: bool = False):
    """Load a checkpoint written by `training.train` -> MobileNetV1 in eval mode.

    The module takes float32 [N,1,48,48] = fer_ros.perception.preprocess.normalize(faces) and returns
    logits [N,7] in fer_ros.LABELS order (apply softmax for probabilities), exactly like
    the shipped ONNX model. with_extra=True also returns the whole checkpoint dict.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a fer_ros training checkpoint (needs 'config' and 'state_dict')")
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return (model, ckpt) if with_extra else model

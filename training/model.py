"""MobileNetV1 training side: ImageNet initialisation and checkpoint I/O.

The network itself (MobileNetV1, DepthwiseConv, build) lives in the core,
fer_ros.perception.mobilenet, so the classifier's torch backend needs no `training`; it is
re-exported here for training code.

Checkpoints written by `training.train` are plain dicts of tensors and plain Python data (see
`save_checkpoint`), so they load with torch.load(weights_only=True): a checkpoint never runs
code. `load_checkpoint(path) -> nn.Module` (eval mode, CPU) rebuilds the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fer_ros import LABELS
from fer_ros.perception.mobilenet import (BLOCKS, BN_EPS, BN_MOMENTUM, DepthwiseConv,  # noqa: F401 - re-exported
                                          MobileNetV1, build, from_checkpoint, read_checkpoint)


def keras_names(model: MobileNetV1):
    """(Keras layer name, conv, bn) of each conv/bn module in order, for the ImageNet conversion."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
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
    for name, conv, bn in keras_names(model):
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


def plain(obj, where: str = "checkpoint"):
    """`obj` as tensors and plain Python data only (what torch.load(weights_only=True) reads):
    numpy scalars and arrays become Python numbers and tensors, paths strings. Anything else is a
    TypeError now rather than a checkpoint that cannot be loaded safely later."""
    if isinstance(obj, np.generic):  # first: np.float64 is also a float, but pickles as numpy
        return obj.item()
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (tensors and plain data only)")


def save_checkpoint(path, model, labels=None, **extra) -> None:
    """Write {"config", "state_dict", "labels", **extra} atomically (tmp file + rename), as
    plain data (`plain`) so that it loads with weights_only=True.
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
    ckpt = plain({"config": model.config(), "state_dict": sd, "labels": [str(c) for c in labels], **extra})
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def load_checkpoint(path, map_location="cpu", with_extra: bool = False):
    """Load a checkpoint written by `training.train` -> MobileNetV1 in eval mode.

    The module takes float32 [N,1,48,48] = fer_ros.perception.preprocess.normalize(faces) and returns
    logits [N,7] in fer_ros.LABELS order (apply softmax for probabilities), exactly like
    the shipped ONNX model. with_extra=True also returns the whole checkpoint dict.
    """
    model, ckpt = from_checkpoint(path, map_location)
    return (model, ckpt) if with_extra else model

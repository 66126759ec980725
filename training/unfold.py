"""A training checkpoint from an exported ONNX model whose BatchNorm was folded into the convolutions.

    python -m training.unfold fer_ros/models/fer_mobilenet_v1.onnx --out runs/run4_unfolded.pt

The export folds each BatchNorm into the convolution before it (weights W, bias b). To fine-tune
such a model again (stage 2 from a shipped stage-1 model whose training checkpoint is gone), the
BatchNorm layers are put back so that they change nothing: the convolution keeps W, and each
BatchNorm gets running mean mu and variance var measured of W x on FER-2013 Training faces,
gamma = sqrt(var + eps) and beta = mu + b. In evaluation mode that is exactly W x + b; in training
mode, where a batch's own statistics replace mu and var, it is close to it. A check prints the
largest logit difference between the ONNX model and the checkpoint on PublicTest faces.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn

from fer_ros import LABELS
from fer_ros.perception.preprocess import normalize
from training import data as D
from training.model import MobileNetV1, save_checkpoint


def onnx_weights(path) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """(conv weight, bias) of every Conv in graph order, and the classifier's weight and bias."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    # writable copies: torch warns on the read-only arrays onnx returns
    init = {i.name: np.array(numpy_helper.to_array(i)) for i in m.graph.initializer}
    convs = [(init[n.input[1]], init[n.input[2]]) for n in m.graph.node if n.op_type == "Conv"]
    return convs, init["classifier.weight"], init["classifier.bias"]


@torch.no_grad()
def unfold(path, faces48: np.ndarray, width: float = 0.75) -> MobileNetV1:
    convs, cw, cb = onnx_weights(path)
    model = MobileNetV1(width=width, num_classes=cw.shape[0]).eval()
    pairs = [(m, model.features[i + 1]) for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    if len(pairs) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, a width-{width} MobileNetV1 has {len(pairs)}")
    stats = {}

    def hook(bn):
        def f(_, inp, __):
            x = inp[0].double()
            stats[bn] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))
        return f

    for (conv, bn), (w, b) in zip(pairs, convs):
        if tuple(conv.weight.shape) != w.shape:
            raise ValueError(f"{path}: convolution {tuple(w.shape)} does not fit {tuple(conv.weight.shape)}")
        conv.weight.copy_(torch.from_numpy(w))
        # identity BatchNorm plus the folded bias, so the statistics below are those of W x
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.from_numpy(b))
    model.classifier.weight.copy_(torch.from_numpy(cw))
    model.classifier.bias.copy_(torch.from_numpy(cb))
    # layer by layer: each BatchNorm's input statistics, with the earlier layers already exact
    for _, bn in pairs:
        h = bn.register_forward_hook(hook(bn))
        model(torch.from_numpy(normalize(faces48)))
        h.remove()
        mu, var = stats[bn]
        b = bn.bias.clone()
        bn.running_mean.copy_(mu.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_(torch.sqrt(var + bn.eps).float())
        bn.bias.copy_(mu.float() + b)
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx")
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=float, default=0.75)
    ap.add_argument("--n", type=int, default=2000, help="FER-2013 Training faces for the statistics")
    ap.add_argument("--shared", default=None)
    a = ap.parse_args(argv)
    train = D.fer2013("Training", a.shared).images
    train = train[np.random.default_rng(0).choice(len(train), a.n, replace=False)]
    model = unfold(a.onnx, train, a.width)
    test = D.fer2013("PublicTest", a.shared).images
    import onnxruntime as ort
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    x = normalize(test)
    ref = np.concatenate([sess.run(None, {"input": x[i:i + 512]})[0] for i in range(0, len(x), 512)])
    with torch.no_grad():
        got = torch.cat([model(torch.from_numpy(x[i:i + 512])) for i in range(0, len(x), 512)]).numpy()
    diff = float(np.abs(ref - got).max())
    save_checkpoint(a.out, model, labels=LABELS, unfolded_from=str(a.onnx), max_abs_logit_diff=diff)
    print(f"{a.out}: max |logit difference| vs {a.onnx} on {len(x)} PublicTest faces {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Center loss and Wen et al.'s centre update against hand computations; weight EMA; metrics; ImageNet init."""

import numpy as np
import pytest
import torch

from conftest import need_shared
from training.model import MobileNetV1, load_imagenet
from training.report import metrics
from training.losses import CenterLoss
from training.weights import WeightEMA


def test_center_loss_value_and_gradient():
    cl = CenterLoss(3, 2)
    cl.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [1.0, 3.0], [0.0, 0.0], [3.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 1, 0, 2])
    loss = cl(x, y)
    # 1/(2m) sum ||x_i - c_yi||^2 = (1 + 4 + 0 + 2) / 8
    assert loss.item() == pytest.approx(7 / 8)
    loss.backward()
    # d/dx_i = (x_i - c_yi) / m
    expect = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]]) / 4
    assert torch.allclose(x.grad, expect)


def test_center_update_is_wen_rule():
    cl = CenterLoss(3, 2)
    c0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    cl.centers.copy_(c0)
    x = torch.tensor([[1.0, 0.0], [1.0, 3.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 0, 2, 0])
    alpha = 0.5
    cl.update(x, y, alpha)
    # class 0: n=3, sum(c - x) = (0-1 + 0-0 + 0-1, 0-0 + 0-2 + 0-1) = (-2, -3); delta = (-2,-3)/4
    # class 1: n=1, (1-1, 1-3) = (0,-2) / 2 ; class 2: n=1, (2-3, 0-1)/2 ; no class absent here
    delta = torch.tensor([[-2 / 4, -3 / 4], [0.0, -1.0], [-0.5, -0.5]])
    assert torch.allclose(cl.centers, c0 - alpha * delta)
    # a class absent from the batch does not move
    before = cl.centers.clone()
    cl.update(x[:1], y[:1], alpha)
    assert torch.equal(cl.centers[1:], before[1:])


def test_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0, 2])
    m = metrics(y, p, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision a 1/2, b 2/3, c 1; recall a 1/2, b 2/3, c 1
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["macro_recall"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]


def test_imagenet_conversion_rgbsum_equals_rgb_network_on_gray():
    """Summing the RGB first-conv kernel is the RGB network fed a gray image in 3 channels;
    this also checks the HWIO/HWC1 -> PyTorch transposes of every other layer."""
    path = need_shared("weights", "mobilenet_v1_0.75_224_imagenet_keras.npz")
    gray = MobileNetV1(0.75, in_channels=1)
    rgb = MobileNetV1(0.75, in_channels=3)
    info = load_imagenet(gray, path, "rgbsum")
    load_imagenet(rgb, path)
    assert info["fresh"] == [] and len(info["loaded"]) == 27
    rgb.classifier.load_state_dict(gray.classifier.state_dict())
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    gray.eval(), rgb.eval()
    with torch.no_grad():
        assert torch.allclose(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)
    w = np.load(path)
    assert torch.equal(rgb.features[3].weight[5, 0], torch.from_numpy(w["conv_dw_1__depthwise_kernel"][:, :, 5, 0]))
    assert rgb.features[1].eps == 1e-3


def test_imagenet_width1_partial_file_leaves_last_pointwise_fresh():
    path = need_shared("weights", "mobilenet_v1_1.0_224_imagenet_keras_partial.npz")
    m = MobileNetV1(1.0)
    info = load_imagenet(m, path, "fresh")
    assert info["fresh"] == ["conv1", "conv_pw_13"]


def test_weight_ema_follows_the_hand_formula():
    """ema <- d * ema + (1 - d) * w for weights and BN statistics; the BN step counter is copied."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(2.0)
        net[1].num_batches_tracked.fill_(5)
    ema.update()
    assert torch.allclose(ema.model[0].weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), 0.2))
    assert int(ema.model[1].num_batches_tracked) == 5
    ema.update()  # a second step moves another tenth of the remaining gap
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), 0.38))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_final_stride_one_keeps_a_3x3_map_and_round_trips(tmp_path):
    """final_stride=1 drops only the last downsampling; checkpoints and the ONNX export keep it."""
    from training.export import compare, export_onnx
    from training.model import build

    x = torch.randn(3, 1, 48, 48)
    default, fs1 = MobileNetV1(width=0.25).eval(), MobileNetV1(width=0.25, final_stride=1).eval()
    assert default.features(x).shape[-2:] == (2, 2) and fs1.features(x).shape[-2:] == (3, 3)
    assert [p.shape for p in default.parameters()] == [p.shape for p in fs1.parameters()]  # same weights
    assert "final_stride" not in default.config() and build(fs1.config()).final_stride == 1
    assert compare(fs1, export_onnx(fs1, tmp_path / "fs1.onnx"), x.numpy()) < 1e-4

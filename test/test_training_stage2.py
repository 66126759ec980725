"""Stage-2 options for small datasets (issue 13), each on a few real faces with a small
network: a linear probe leaves the features alone, late-epoch averaging is the mean of those
epochs' weights, interpolation lands between the start and the trained weights, the inner
validation split never splits a sequence and never touches the test fold, and the two center
loss reductions differ by exactly the batch size; even batches leave no small remainder."""

import numpy as np
import pytest
import torch

from conftest import need_shared
from training import data as D
from training.experiments import inner_split
from training.losses import CenterLoss
from training.model import MobileNetV1
from training.train import TrainConfig, batch_edges, train_model
from training.weights import WeightAverage, interpolate


@pytest.fixture(scope="module")
def faces():
    fer = D.load_fer2013(need_shared("data", "fer2013.npz"))
    idx = np.flatnonzero(fer.split == 0)[:96]
    return fer.subset(idx)


def _cfg(tmp_path, **kw):
    base = dict(width=0.25, init="scratch", epochs=2, lr=0.05, seed=1, device="cpu", progress=False,
                batch=32, augment=False, shared=str(need_shared()))
    base.update(kw)
    return TrainConfig(**base)


def test_linear_probe_trains_only_the_classifier(faces, tmp_path):
    torch.manual_seed(1)
    start = MobileNetV1(width=0.25)
    ck = tmp_path / "start.pt"
    from training.model import save_checkpoint
    save_checkpoint(ck, start)
    model, _ = train_model(faces, None, _cfg(tmp_path, init=str(ck), epochs=2, probe_epochs=2), quiet=True)
    after = model.state_dict()
    for k, v in start.state_dict().items():
        if k.startswith("classifier."):
            assert not torch.equal(v, after[k]), k
        elif v.dtype.is_floating_point:
            assert torch.equal(v, after[k]), k  # weights and BN statistics untouched
    # after the probe the whole network learns
    model, _ = train_model(faces, None, _cfg(tmp_path, init=str(ck), epochs=3, probe_epochs=2), quiet=True)
    assert not torch.equal(model.state_dict()["features.0.weight"], start.state_dict()["features.0.weight"])


def test_weight_average_and_interpolation():
    torch.manual_seed(0)
    nets = [MobileNetV1(width=0.25) for _ in range(3)]
    avg = WeightAverage()
    for n in nets:
        avg.add(n)
    k = "classifier.weight"
    assert torch.allclose(avg.state[k], sum(n.state_dict()[k] for n in nets) / 3, atol=1e-6)
    a, b = nets[0], nets[1]
    start = {kk: v.clone() for kk, v in a.state_dict().items()}
    target = b.state_dict()[k].clone()
    interpolate(b, start, 0.25)
    assert torch.allclose(b.state_dict()[k], 0.75 * start[k] + 0.25 * target, atol=1e-6)


def test_swa_result_is_the_recalibrated_average(faces, tmp_path):
    model, res = train_model(faces, None, _cfg(tmp_path, epochs=3, swa_from=2), quiet=True)
    assert len(res["history"]) == 3 and not model.training


def test_inner_split_keeps_sequences_whole_and_classes_present():
    ck = D.load_ckplus48(need_shared("data", "ckplus48.npz"), "large6")
    tr, va = inner_split(ck, 0.2, 0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(ck)
    assert not set(ck.group[tr]) & set(ck.group[va])
    assert set(ck.labels[va]) == set(range(6))
    assert 0.1 < len(va) / len(ck) < 0.3


def test_center_loss_sum_is_batch_times_mean():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    mean, total = CenterLoss(3, 4, "mean"), CenterLoss(3, 4, "sum")
    assert total(x, y).item() == pytest.approx(8 * mean(x, y).item(), rel=1e-6)
    with pytest.raises(ValueError):
        CenterLoss(3, 4, "max")


def test_six_class_checkpoint_keeps_its_labels_as_an_initialisation(faces, tmp_path):
    """A stage-2 (6-class) checkpoint records its own classes, so a model initialised from it
    gets each classifier row by name (issue 13: it used to record the 7 FER-2013 labels)."""
    from training.data import CK6
    from training.model import load_checkpoint
    from training.train import make_model

    six = faces.relabel(CK6)
    out = tmp_path / "six"
    train_model(six, None, _cfg(tmp_path, epochs=1), out=out, quiet=True)
    model, ck = load_checkpoint(out / "final.pt", with_extra=True)
    assert ck["labels"] == list(CK6)
    target = ("happy", "angry", "sad")  # another order, fewer classes
    init = make_model(_cfg(tmp_path, init=str(out / "final.pt")), target)
    for i, c in enumerate(target):
        j = CK6.index(c)
        assert torch.equal(init.classifier.weight[i], model.classifier.weight[j])


def test_even_batches_leave_no_small_remainder_where_the_default_leaves_a_few_faces():
    # a JAFFE training fold less its inner validation split: 136 faces in batches of 64
    assert np.diff(batch_edges(136, 64, even=False)).tolist() == [64, 64, 8]
    assert np.diff(batch_edges(136, 64, even=True)).tolist() == [45, 46, 45]
    assert batch_edges(129, 64, even=False) == [0, 64, 128]  # a remainder of one face is dropped
    for n in (2, 63, 64, 65, 170, 28709):
        edges = batch_edges(n, 64, even=True)
        sizes = np.diff(edges)
        assert edges[0] == 0 and edges[-1] == n and len(sizes) == -(-n // 64)
        assert sizes.max() - sizes.min() <= 1 and sizes.max() <= 64


def test_l2sp_pulls_the_backbone_back_to_its_initial_weights(faces, tmp_path):
    torch.manual_seed(2)
    start = MobileNetV1(width=0.25)
    ck = tmp_path / "start.pt"
    from training.model import save_checkpoint
    save_checkpoint(ck, start)
    w0 = start.state_dict()

    def drift(model, head: bool):
        return sum(float(((v - w0[k]) ** 2).sum()) for k, v in model.state_dict().items()
                   if k.startswith("classifier.") == head and v.dtype.is_floating_point and "running" not in k)

    plain, _ = train_model(faces, None, _cfg(tmp_path, init=str(ck), epochs=3), quiet=True)
    anchored, _ = train_model(faces, None, _cfg(tmp_path, init=str(ck), epochs=3, l2sp=5.0), quiet=True)
    assert drift(anchored, head=False) < 0.5 * drift(plain, head=False)
    assert drift(anchored, head=True) > 0.0  # the classifier is not anchored: it still learns


def test_distilling_from_the_initial_model_keeps_its_answers_where_the_labels_pull_away(faces, tmp_path):
    """`distill="init"` (learning without forgetting): the teacher is the initial model itself, on
    the clean training faces. A start model that says 'surprise' to every face keeps saying it
    when only the teacher counts, while training on the labels alone moves it off."""
    torch.manual_seed(3)
    start = MobileNetV1(width=0.25)
    surprise = list(faces.class_names).index("surprise")
    with torch.no_grad():
        start.classifier.bias[surprise] = 6.0
    ck = tmp_path / "start.pt"
    from training.model import save_checkpoint
    save_checkpoint(ck, start)

    def says_surprise(model):
        from fer_ros.perception.preprocess import normalize

        model.eval()
        with torch.no_grad():
            return float(np.mean(model(torch.from_numpy(normalize(faces.images))).argmax(1).numpy() == surprise))

    start.eval()
    assert says_surprise(start) == 1.0 and np.mean(faces.labels == surprise) < 0.3
    kw = dict(init=str(ck), epochs=4, center_lambda=0.0, distill_t=1.0)
    kept, _ = train_model(faces, None, _cfg(tmp_path, distill="init", distill_weight=1.0, **kw), quiet=True)
    labels, _ = train_model(faces, None, _cfg(tmp_path, **kw), quiet=True)
    assert says_surprise(kept) > 0.9
    assert says_surprise(labels) < 0.5

"""Model files never run code (issue 14): checkpoints are read with weights_only=True, TorchScript
with torch.jit.load, and what training writes is plain enough to be read that way."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import need_shared  # noqa: E402
from fer_ros import LABELS  # noqa: E402
from fer_ros.perception.classifier import ExpressionClassifier  # noqa: E402
from training import model as M  # noqa: E402


class Payload:
    """Unpickling this calls exec(), which writes `marker`: proof that the file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _real_checkpoint_dict():
    net = M.MobileNetV1(width=0.25)
    return {"config": net.config(), "state_dict": net.state_dict(), "labels": list(LABELS)}


@pytest.fixture(params=["bare", "inside_a_checkpoint", "legacy_pickle"])
def evil(request, tmp_path):
    """A .pt holding the payload alone, next to a valid checkpoint's contents, or as an old-style
    (non-zip) pickle."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    if request.param == "bare":
        torch.save(Payload(marker), path)
    elif request.param == "inside_a_checkpoint":
        torch.save({**_real_checkpoint_dict(), "history": Payload(marker)}, path)
    else:
        torch.save({**_real_checkpoint_dict(), "x": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    return path, marker


def test_the_payload_does_run_when_fully_unpickled(evil):
    """Guards the tests below: the payload is live, so its absence there means it was refused."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.read_text() == "ran"


def test_torch_backend_refuses_the_payload_without_running_it(evil):
    path, marker = evil
    with pytest.raises(ValueError, match="refused: it holds Python objects") as err:
        ExpressionClassifier(path, backend="torch")
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_load_checkpoint_refuses_the_payload_without_running_it(evil):
    path, marker = evil
    with pytest.raises(ValueError, match="refused: it holds Python objects"):
        M.load_checkpoint(path)
    assert not marker.exists()


def test_a_pickled_module_is_refused(tmp_path):
    """A whole pickled nn.Module needs full unpickling: no longer accepted."""
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 7), path)
    with pytest.raises(ValueError, match="refused"):
        ExpressionClassifier(path, backend="torch")


def test_checkpoint_config_cannot_ask_for_a_huge_network(tmp_path):
    ck = _real_checkpoint_dict()
    ck["config"]["width"] = 1000.0
    path = tmp_path / "huge.pt"
    torch.save(ck, path)
    with pytest.raises(ValueError, match="width=1000.0 outside"):
        ExpressionClassifier(path, backend="torch")


def test_checkpoint_for_other_classes_is_refused_by_the_classifier(tmp_path):
    net = M.MobileNetV1(width=0.25, num_classes=3)
    path = tmp_path / "three.pt"
    M.save_checkpoint(path, net, labels=["a", "b", "c"])
    assert M.load_checkpoint(path).num_classes == 3  # fine for training
    with pytest.raises(ValueError, match="classes"):
        ExpressionClassifier(path, backend="torch")


def test_save_checkpoint_makes_extras_plain(tmp_path):
    """numpy scalars/arrays and paths become plain data; what cannot be made plain is refused
    when saving, not discovered when loading."""
    net = M.MobileNetV1(width=0.25)
    path = tmp_path / "c.pt"
    M.save_checkpoint(path, net, epoch=np.int64(3), best={"val_acc": np.float32(0.5), "where": tmp_path},
                      centers=np.ones((7, 2), np.float32), history=[{"loss": np.float64(1.5)}], pair=(1, 2))
    ck = torch.load(path, weights_only=True)
    assert type(ck["epoch"]) is int and ck["epoch"] == 3
    assert type(ck["best"]["val_acc"]) is float and ck["best"]["where"] == str(tmp_path)
    assert isinstance(ck["centers"], torch.Tensor) and ck["centers"].shape == (7, 2)
    assert ck["history"] == [{"loss": 1.5}] and ck["pair"] == (1, 2)
    with pytest.raises(TypeError, match=r"checkpoint\['bad'\]: a object cannot go"):
        M.save_checkpoint(tmp_path / "bad.pt", net, bad=object())
    assert not (tmp_path / "bad.pt").exists()


def test_torchscript_still_loads(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7)).eval()
    path = tmp_path / "ts.pt"
    torch.jit.trace(net, torch.zeros(1, 1, 48, 48)).save(str(path))
    p = ExpressionClassifier(path, backend="torch").predict(np.zeros((2, 48, 48), np.uint8))
    assert p.shape == (2, 7)


def test_a_resumable_checkpoint_loads_weights_only(tmp_path):
    """What training puts in last.pt (optimizer state after real steps, history, best, EMA
    weights, centers) loads with weights_only=True and restores the optimizer."""
    torch.manual_seed(0)
    net = M.MobileNetV1(width=0.25)
    opt = torch.optim.SGD([{"params": list(net.parameters()), "lr_mult": 1.0, "head": True}], lr=0.01, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.randn(4, 1, 48, 48)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    history = [{"epoch": 1, "train_loss": np.float64(1.9), "val_acc": 0.25}]
    path = tmp_path / "last.pt"
    M.save_checkpoint(path, net, optimizer=opt.state_dict(), centers=torch.zeros(7, 256), epoch=0, history=history,
                      best={"val_acc": np.float32(0.25), "epoch": 1, "metrics": {"confusion": np.eye(7, dtype=int)}},
                      ema_state_dict=net.state_dict())
    ck = torch.load(path, weights_only=True)
    assert ck["history"] == [{"epoch": 1, "train_loss": 1.9, "val_acc": 0.25}]
    opt2 = torch.optim.SGD(M.MobileNetV1(width=0.25).parameters(), lr=0.01, momentum=0.9)
    opt2.load_state_dict(ck["optimizer"])
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], buf) and buf.abs().sum() > 0


@pytest.mark.slow
def test_checkpoints_written_by_training_load_weights_only(tmp_path):
    """A real (tiny) training run: last.pt (optimizer state, history, best, config), best.pt and
    final.pt all load with weights_only=True."""
    from training import data as D
    from training.train import TrainConfig, train_model

    fer = D.load_fer2013(need_shared("data", "fer2013.npz"))
    train = fer.subset(np.flatnonzero(fer.split == 0)[:32])
    val = fer.subset(np.flatnonzero(fer.split == 1)[:16])
    cfg = dict(width=0.25, init="scratch", lr=0.01, seed=0, device="cpu", progress=False, augment=False,
               shared=str(need_shared()))
    out = tmp_path / "run"
    torch.set_num_threads(1)
    train_model(train, val, TrainConfig(epochs=1, **cfg), out=out, quiet=True)
    for name in ("last.pt", "best.pt", "final.pt"):
        ck = torch.load(out / name, weights_only=True)
        assert set(ck) >= {"config", "state_dict", "labels"}, name
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["optimizer"]["state"] and last["history"][0]["epoch"] == 1
    model = M.load_checkpoint(out / "final.pt")
    assert ExpressionClassifier(out / "final.pt", backend="torch").predict(val.images[:4]).shape == (4, 7)
    assert model.num_classes == 7

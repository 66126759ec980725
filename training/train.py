"""Training: softmax cross-entropy (+ center loss), SGD, checkpoints, resume, progress, logs.

Stage 1 (ImageNet -> FER-2013, train on Training, select on PublicTest):

    python -m training.train --out runs/stage1 --width 0.75 --epochs 60 --seed 0

`train_model()` is the library entry used by the stage-2 experiments (training.experiments).
Each run directory gets: last.pt (every epoch, for --resume), best.pt (best validation
accuracy), history.json, train.log, curves.png, confusion.png, result.json.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fer_ros import LABELS
from training import data as D
from training.distill import load_teacher
from training.evaluate import evaluate, pick_device, predict_logits, recalibrate_bn
from training.losses import CenterLoss, classification_loss
from training.model import MobileNetV1, build, default_imagenet_path, load_imagenet, save_checkpoint
from training.report import plot_confusion, plot_curves, provenance, write_json
from training.weights import WeightAverage, WeightEMA, interpolate


# ---------------------------------------------------------------- config
@dataclass
class TrainConfig:
    width: float = 0.75
    final_stride: int = 2  # 1: no last downsampling (3x3 final map on 48x48 faces; see MobileNetV1)
    epochs: int = 60
    batch: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    lr_decay: float = 0.94
    decay_every: int = 15
    schedule: str = "step"  # "step" (paper: x0.94 every 15 epochs) or "cosine"
    center_lambda: float = 0.001  # 0 disables center loss (softmax only)
    center_alpha: float = 0.001
    center_reduction: str = "mean"  # "mean" over the batch (Wen's Caffe layer) or "sum" (the printed formula)
    init: str = "imagenet"  # "imagenet", "scratch", or a checkpoint path (stage 2)
    first_conv: str = "fresh"  # "fresh" or "rgbsum" (ImageNet init only)
    dropout: float = 0.5
    min_scale: float = 0.85
    augment: bool = True
    jitter: str = "area"  # crop placement, training.data.JITTERS: area (paper), inside, framing
    scale_lo: float = 0.85  # jitter=framing: crop side range, in FER-2013 frame sides
    scale_hi: float = 1.3
    shift: float = 0.1  # jitter=framing: centre shift up to this fraction of the side
    photo: bool = False  # random gamma, contrast, brightness and blur (training.data.photometric)
    rotate: float = 0.0  # >0: also rotate training faces by up to this many degrees
    erase: float = 0.0  # >0: random erasing of one rectangle with this probability
    mixup: float = 0.0  # >0: blend each batch with a shuffled copy of itself, weight ~ Beta(mixup, mixup),
    # and the loss terms (labels and teacher) by the same weight (Zhang et al. 2018)
    clip_grad: float = 0.0  # >0: clip the gradient's global norm to this
    even_batches: bool = False  # split each epoch into equal batches instead of full ones and a remainder
    # (a remainder of a few faces gets a full step at a high lr, with BatchNorm statistics of those few)
    select: str = "best"  # stage-1 CLI: keep the epoch with the best validation accuracy, or the "last"
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    shared: str | None = None
    eval_every: int = 1
    bn_recal: bool = False  # re-estimate BN statistics on the training faces before evaluating
    bn_recal_max: int = 5000  # ...after every epoch when the set is this small, else after the last
    backbone_lr_mult: float = 1.0  # <1: layers before the classifier learn at this fraction of lr (stage 2)
    probe_epochs: int = 0  # first train only the classifier on frozen features for this many epochs (stage 2)
    swa_from: int = 0  # >0: the result is the average of the weights after epochs swa_from..epochs (1-based)
    interp: float = 1.0  # <1: the result moves to (1-interp) * initial + interp * trained weights (WiSE-FT)
    inner_val: float = 0.0  # CV (training.experiments): >0 holds out this fraction of each training fold
    # to choose the epoch on, never the test fold
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0: the paper's plain softmax loss)
    l2sp: float = 0.0  # >0: add l2sp/2 * ||w - w_init||^2 over the layers before the classifier (L2-SP,
    # Li et al. 2018): stage 2 is pulled back to what stage 1 learned, not only towards 0 (weight decay)
    distill: str = ""  # .npy of teacher logits [N, C], one row per training face (training.distill), or
    # "init": the initial model's own answers (flip + crops averaged) on the clean training faces, taken
    # before training: a stage 2 that learns the new labels without forgetting stage 1's (Li & Hoiem, LwF)
    distill_weight: float = 0.5  # loss = (1-w) * CE + w * T^2 * KL(teacher_T || student_T)
    distill_t: float = 2.0  # softmax temperature of the distillation term
    ema: float = 0.0  # >0: keep an exponential moving average of the weights (decay per step);
    # it is what gets evaluated, selected and saved
    eval_flip: bool = False  # evaluate on the mean logits of each face and its mirror image
    eval_crops: bool = False  # ... and of its five 90% crops (ExpressionClassifier's crop_average)
    max_seconds: float = 0.0  # >0: stop after the epoch that passes this wall time (cosine: fit epochs to it)
    progress: bool = True


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return cfg.lr * cfg.lr_decay ** (epoch // cfg.decay_every)


def make_model(cfg: TrainConfig, class_names, log=None) -> MobileNetV1:
    """Build the network for `class_names` and initialise it per cfg.init."""
    log = log or logging.getLogger("training")
    model = MobileNetV1(width=cfg.width, num_classes=len(class_names), dropout=cfg.dropout,
                        final_stride=cfg.final_stride)
    if cfg.init == "imagenet":
        info = load_imagenet(model, default_imagenet_path(cfg.width, D.shared_path(cfg.shared)), cfg.first_conv)
        log.info("ImageNet init (first conv %s): fresh layers %s", cfg.first_conv, info["fresh"])
    elif cfg.init == "scratch":
        log.info("random init")
    else:
        ck = _load(cfg.init, "cpu")
        src = build(ck["config"])
        src.load_state_dict(ck["state_dict"])
        if src.width != cfg.width:
            raise ValueError(f"{cfg.init} has width {src.width}, config asks for {cfg.width}")
        sd = {k: v for k, v in src.state_dict().items() if not k.startswith("classifier.")}
        model.load_state_dict(sd, strict=False)
        # Classifier rows of classes the source also had keep their weights (mapped by name).
        src_names = list(ck.get("labels", LABELS))
        kept = []
        with torch.no_grad():
            for i, c in enumerate(class_names):
                if c in src_names:
                    j = src_names.index(c)
                    model.classifier.weight[i] = src.classifier.weight[j]
                    model.classifier.bias[i] = src.classifier.bias[j]
                    kept.append(c)
        log.info("init from %s; classifier rows kept for %s", cfg.init, kept)
        if list(class_names) == src_names and "centers" in ck:
            model._init_centers = ck["centers"]  # same classes: continue with the trained centres
    return model


# ---------------------------------------------------------------- training loop
def _epoch_data(fs: D.FaceSet, cfg: TrainConfig, epoch: int):
    """(faces uint8 [N,48,48], labels, permutation) for one epoch, reproducible from seed+epoch."""
    rng = np.random.default_rng([cfg.seed, epoch])
    faces = (D.augment(fs.images, rng, cfg.min_scale, rotate=cfg.rotate, erase=cfg.erase, jitter=cfg.jitter,
                       scale_range=(cfg.scale_lo, cfg.scale_hi), shift=cfg.shift, photo=cfg.photo)
             if cfg.augment else fs.faces48())
    return faces, rng.permutation(len(fs))


def _setup_log(out: Path | None, quiet: bool) -> logging.Logger:
    log = logging.getLogger(f"training.{out}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        if not quiet:
            h = logging.StreamHandler()
            h.setFormatter(fmt)
            log.addHandler(h)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(out / "train.log")
            fh.setFormatter(fmt)
            log.addHandler(fh)
    return log


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with parameter groups (weight decay?, classifier?): no weight decay on BN and biases.
    The classifier gets groups of its own only when the backbone can learn at another rate
    (backbone_lr_mult or a probe phase), so other runs keep the two groups (decay first) that
    older checkpoints' optimizer states were saved with, and still resume."""
    split_head = cfg.backbone_lr_mult != 1.0 or cfg.probe_epochs > 0
    groups = {}
    for n, p in model.named_parameters():
        groups.setdefault((p.ndim > 1, split_head and n.startswith("classifier.")), []).append(p)
    return torch.optim.SGD([{"params": groups[k], "weight_decay": cfg.weight_decay if k[0] else 0.0,
                             "lr_mult": 1.0 if k[1] else cfg.backbone_lr_mult, "head": k[1] or not split_head}
                            for k in sorted(groups, key=lambda k: (not k[0], k[1]))], lr=cfg.lr, momentum=cfg.momentum)


class _Losses:
    """The loss terms of one step: classification (+ distillation), center loss (+ L2-SP)."""

    def __init__(self, cfg: TrainConfig, closs: CenterLoss, teacher_all, anchor=()):
        self.cfg, self.closs, self.teacher_all = cfg, closs, teacher_all
        self.anchor = anchor  # L2-SP: (parameter, its initial value) pairs

    def __call__(self, logits, feats, y, idx, mix=None):
        """mix = (lam, j): the batch is lam * x + (1 - lam) * x[j]; every term is weighted the same
        way (for the KL term that equals matching the blend of the two teacher distributions)."""
        loss = self._terms(logits, feats, y, idx)
        if mix is not None:
            lam, j = mix
            loss = lam * loss + (1 - lam) * self._terms(logits, feats, y[j], idx[j])
        if self.anchor:
            loss = loss + 0.5 * self.cfg.l2sp * sum(((p - p0) ** 2).sum() for p, p0 in self.anchor)
        return loss

    def _terms(self, logits, feats, y, idx):
        cfg = self.cfg
        teacher = self.teacher_all[idx] if self.teacher_all is not None else None
        loss = classification_loss(logits, y, cfg.label_smoothing, teacher, cfg.distill_weight, cfg.distill_t)
        if cfg.center_lambda > 0:
            loss = loss + cfg.center_lambda * self.closs(feats, y)
        return loss

    def after_step(self, feats, y):
        if self.cfg.center_lambda > 0:
            self.closs.update(feats, y, self.cfg.center_alpha)


def batch_edges(n: int, batch: int, even: bool) -> list[int]:
    """Where an epoch of n faces is cut into batches. even: ceil(n / batch) batches of equal
    size (within 1); else full batches, then the remainder when it has at least 2 faces (a
    single face cannot give BatchNorm statistics)."""
    if even:
        nb = -(-n // batch)
        return [round(i * n / nb) for i in range(nb + 1)]
    nb = n // batch + (1 if n % batch >= 2 else 0)
    return [min(i * batch, n) for i in range(nb + 1)]


def _train_epoch(model, opt, losses: _Losses, ema, x_all, labels_all, perm, cfg: TrainConfig, device, probe: bool,
                 epoch: int, desc: str, show: bool):
    """One pass over the augmented faces in `perm` order; returns (mean loss, accuracy)."""
    model.train()
    if probe:  # linear probe: frozen features, BatchNorm statistics included
        model.features.eval()
    use_amp = cfg.amp and device.type == "cuda"
    edges = batch_edges(len(perm), cfg.batch, cfg.even_batches)
    steps = range(len(edges) - 1)
    bar = None
    if show:
        from tqdm import tqdm
        bar = steps = tqdm(steps, desc=desc, leave=False, dynamic_ncols=True)
    tot_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    perm_t = torch.from_numpy(perm).to(device)
    mix_rng = np.random.default_rng([cfg.seed, epoch, 17])  # per epoch, so that --resume repeats it
    for b in steps:
        idx = perm_t[edges[b]:edges[b + 1]]
        x = x_all[idx].float().unsqueeze(1).mul_(1 / 127.5).sub_(1.0)  # == preprocess.normalize
        x = x.contiguous(memory_format=torch.channels_last)
        y = labels_all[idx]
        mix = None
        if cfg.mixup > 0 and len(y) > 1:
            # lam >= 0.5 gives the same blends (the partner is random) and lets the accuracy and the
            # centre updates follow the larger share, y
            lam = float(mix_rng.beta(cfg.mixup, cfg.mixup))
            lam = max(lam, 1 - lam)
            j = torch.from_numpy(mix_rng.permutation(len(y))).to(device)
            x = lam * x + (1 - lam) * x[j]
            mix = (lam, j)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits, feats = model(x, return_features=True)
        logits, feats = logits.float(), feats.float()
        loss = losses(logits, feats, y, idx, mix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        losses.after_step(feats, y)
        if ema:
            ema.update()
        tot_loss += loss.detach() * len(y)  # no GPU sync per step
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.set_postfix(loss=f"{float(tot_loss) / seen:.3f}", acc=f"{int(correct) / seen:.3f}")
    if bar is not None:
        bar.close()
    return float(tot_loss) / max(seen, 1), int(correct) / max(seen, 1)


def _load(path, device):
    """A checkpoint of this package's training (tensors and plain data only: no code runs)."""
    return torch.load(path, map_location=device, weights_only=True)


def train_model(train: D.FaceSet, val: D.FaceSet | None, cfg: TrainConfig, out=None, resume: bool = False,
                quiet: bool = False, select: bool = True, save_last: bool = True, stamp: dict | None = None):
    """Train on `train`; evaluate `val` each epoch. Returns (model at best val accuracy when
    select=True (else the last epoch, or the late-epoch average with swa_from, moved towards
    the initial weights with interp < 1), result dict, with `stamp` merged in). With `out`, writes
    checkpoints and logs there; resume=True continues from out/last.pt (written every epoch unless
    save_last=False)."""
    out = Path(out) if out else None
    log = _setup_log(out, quiet)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    class_names = tuple(train.class_names)
    model = make_model(cfg, class_names, log).to(device)
    # channels_last: cuDNN's fast path, and on the 2-core CPU (oneDNN) 1.5x faster (bench/bench_train.py).
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    init_state = ({k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if cfg.interp < 1 else None)
    # LwF's teacher and L2-SP's anchor: the model as initialised (stage 1), before a resume loads later weights
    teacher_all = None
    if cfg.distill == "init":
        teacher_all = torch.from_numpy(predict_logits(model, train.faces48(), device, batch=256, flip=True,
                                                      crops=True)).to(device)
        log.info("distilling from the initial model: its accuracy on the training faces %.4f",
                 float((teacher_all.argmax(1).cpu().numpy() == train.labels).mean()))
    anchor = ([(p, p.detach().clone()) for n, p in model.named_parameters() if not n.startswith("classifier.")]
              if cfg.l2sp > 0 else [])
    closs = CenterLoss(len(class_names), model.feature_dim, cfg.center_reduction).to(device)
    if getattr(model, "_init_centers", None) is not None:
        closs.centers.copy_(model._init_centers)
        del model._init_centers
    opt = _optimizer(model, cfg)
    start, history, best = 0, [], {"val_acc": -1.0, "epoch": -1}
    best_state = None
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    evalm = ema.model if ema else model  # what is evaluated, selected and saved
    swa = WeightAverage() if cfg.swa_from > 0 else None
    if resume and out is not None and (out / "last.pt").exists():
        ck = _load(out / "last.pt", device)
        model.load_state_dict(ck["state_dict"])
        if ema:
            ema.model.load_state_dict(ck["ema_state_dict"])
        opt.load_state_dict(ck["optimizer"])
        closs.centers.copy_(ck["centers"])
        start, history, best = ck["epoch"] + 1, ck["history"], ck["best"]
        if (out / "best.pt").exists():
            best_state = _load(out / "best.pt", "cpu")["state_dict"]
        log.info("resumed from %s at epoch %d", out / "last.pt", start)
    log.info("train %d images %s, val %d, device %s, config %s", len(train), train.counts(),
             len(val) if val is not None else 0, device, asdict(cfg))
    pool = ThreadPoolExecutor(1)  # augments the next epoch while this one trains
    nxt = pool.submit(_epoch_data, train, cfg, start) if start < cfg.epochs else None
    labels_all = torch.from_numpy(train.labels).to(device)
    if cfg.distill and cfg.distill != "init":
        teacher_all = torch.from_numpy(load_teacher(cfg.distill, len(train), len(class_names))).to(device)
    losses = _Losses(cfg, closs, teacher_all, anchor)
    train_faces48 = train.faces48() if (cfg.bn_recal or swa or init_state is not None) else None
    t_start = time.time()
    for epoch in range(start, cfg.epochs):
        if epoch >= cfg.epochs:  # a time budget shortened the schedule
            break
        t0 = time.time()
        faces, perm = nxt.result()
        if epoch + 1 < cfg.epochs:
            nxt = pool.submit(_epoch_data, train, cfg, epoch + 1)
        lr = lr_at(cfg, epoch)
        probe = epoch < cfg.probe_epochs
        for g in opt.param_groups:
            g["lr"] = lr * (g["lr_mult"] if not probe else float(g["head"]))
        loss, acc = _train_epoch(model, opt, losses, ema, torch.from_numpy(faces).to(device), labels_all, perm, cfg,
                                 device, probe, epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and not quiet)
        rec = {"epoch": epoch + 1, "lr": lr, "train_loss": loss, "train_acc": acc, "epoch_s": None}
        if swa is not None and epoch + 1 >= cfg.swa_from:
            swa.add(evalm)
        if cfg.bn_recal and (len(train) <= cfg.bn_recal_max or epoch + 1 == cfg.epochs):
            recalibrate_bn(evalm, train_faces48, device)
        if val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            m, vloss, plain = evaluate(evalm, val, device, flip=cfg.eval_flip, with_plain=True, crops=cfg.eval_crops)
            rec.update(val_loss=vloss, val_acc=m["accuracy"], val_macro_f1=m["macro_f1"])
            if cfg.eval_flip or cfg.eval_crops:  # the same weights on the faces alone, to show what averaging gains
                rec["val_acc_noflip"] = plain
            if ema:  # the raw weights (no flip), to show what averaging gains
                rec["val_acc_raw"] = evaluate(model, val, device)[0]["accuracy"]
            if select and m["accuracy"] > best["val_acc"]:
                best = {"val_acc": m["accuracy"], "epoch": epoch + 1, "metrics": m}
                best_state = {k: v.detach().cpu().clone() for k, v in evalm.state_dict().items()}
                if out is not None:
                    save_checkpoint(out / "best.pt", evalm, labels=class_names, centers=closs.centers.cpu(),
                                    epoch=epoch, metrics=m, train_config=asdict(cfg))
        rec["epoch_s"] = time.time() - t0
        history.append(rec)
        elapsed = time.time() - t_start
        if cfg.max_seconds and epoch == start + 1 and cfg.schedule == "cosine":
            # fit the cosine schedule into the time budget, timed on the second epoch (the
            # first includes start-up and cuDNN autotuning)
            fit = epoch + 1 + int((cfg.max_seconds - elapsed) / max(rec["epoch_s"], 1e-3))
            if fit < cfg.epochs:
                log.info("time budget %.0f s: cosine schedule shortened to %d epochs", cfg.max_seconds, fit)
                cfg.epochs = max(fit, epoch + 1)
        log.info("epoch %d/%d lr %.4g loss %.4f acc %.4f%s%s (%.1f s)", epoch + 1, cfg.epochs, lr,
                 rec["train_loss"], rec["train_acc"],
                 f" val_loss {rec['val_loss']:.4f} val_acc {rec['val_acc']:.4f}" if "val_acc" in rec else "",
                 "".join(f" {k} {rec[k]:.4f}" for k in ("val_acc_noflip", "val_acc_raw") if k in rec), rec["epoch_s"])
        if out is not None and save_last:
            extra = {"ema_state_dict": {k: v.detach().cpu() for k, v in ema.model.state_dict().items()}} if ema else {}
            save_checkpoint(out / "last.pt", model, labels=class_names, optimizer=opt.state_dict(),
                            centers=closs.centers.cpu(), epoch=epoch, history=history, best=best,
                            train_config=asdict(cfg), **extra)
        if out is not None:
            write_json(history, out / "history.json")
        if cfg.max_seconds and elapsed > cfg.max_seconds and epoch + 1 < cfg.epochs:
            log.info("time budget %.0f s reached after epoch %d: stopping", cfg.max_seconds, epoch + 1)
            break
    pool.shutdown(cancel_futures=True)
    train_s = time.time() - t_start
    if select and best_state is not None:
        model.load_state_dict(best_state)
    elif swa is not None and swa.state is not None:
        model.load_state_dict(swa.state)
    elif ema:
        model.load_state_dict(ema.model.state_dict())
    if init_state is not None:
        interpolate(model, init_state, cfg.interp)
    if (swa is not None or init_state is not None) and not (select and best_state is not None):
        recalibrate_bn(model, train_faces48, device)  # an average of weights needs its own BN statistics
    model = model.to(memory_format=torch.contiguous_format).eval()
    result = {"config": asdict(cfg), "train_counts": train.counts(), "class_names": list(class_names),
              "history": history, "train_seconds_this_run": train_s, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", **(stamp or {})}
    if val is not None:
        m, _ = evaluate(model, val, device, flip=cfg.eval_flip, crops=cfg.eval_crops)
        result["val"] = m
        result["selected_epoch"] = best["epoch"] if select else len(history)
    if out is not None:
        save_checkpoint(out / "final.pt", model, labels=class_names, centers=closs.centers.cpu(),
                        train_config=asdict(cfg), metrics=result.get("val"))
        write_json(result, out / "result.json")
        if history:
            plot_curves(history, out / "curves.png", title=str(out.name))
        if val is not None:
            plot_confusion(result["val"], out / "confusion.png")
    return model, result


# ---------------------------------------------------------------- stage 1 CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run directory (checkpoints, logs, plots)")
    ap.add_argument("--data", default=None, help="fer2013.npz or fer2013.csv (default: shared data)")
    ap.add_argument("--shared", default=None, help="shared folder (default $FER_SHARED or ../shared)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke runs)")
    ap.add_argument("--val-limit", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--quiet", action="store_true")
    for f, v in asdict(TrainConfig()).items():
        if f in ("shared", "progress"):
            continue
        if isinstance(v, bool):
            ap.add_argument(f"--{f.replace('_', '-')}", dest=f, action=argparse.BooleanOptionalAction, default=v)
        else:
            ap.add_argument(f"--{f.replace('_', '-')}", dest=f, type=type(v), default=v)
    a = ap.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(a, k) for k in asdict(TrainConfig()) if k != "shared" and hasattr(a, k)},
                      shared=a.shared)
    path = a.data or D.shared_path(a.shared) / "data" / "fer2013.npz"
    train, val = (D.load_fer2013(path, s) for s in ("Training", "PublicTest"))
    train, val = train.head(a.limit), val.head(a.val_limit)
    if cfg.select not in ("best", "last"):
        ap.error(f"--select must be best or last, got {cfg.select!r}")
    _, res = train_model(train, val, cfg, out=a.out, resume=a.resume, quiet=a.quiet, select=cfg.select == "best",
                         stamp={"kind": "stage1", **provenance("training.train", argv)})  # for training.results
    v = res["val"]
    print(f"PublicTest accuracy {v['accuracy']:.4f} macro F1 {v['macro_f1']:.4f} (epoch {res['selected_epoch']}); "
          f"{len(res['history'])} epochs; run dir {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

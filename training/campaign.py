"""All training runs of the paper reproduction in one go, as parallel processes (GPU machine).

    FER_SHARED=.devcarry/shared python -m training.campaign --runs runs/gpu --results $OUT

Phase A (at once): stage 1 on FER-2013, softmax + center loss with the first convolution
fresh (s1_center) and from summed RGB (s1_rgbsum) -- the better on PublicTest is the shipped
candidate -- and softmax only (s1_softmax, Table 3). Phase B: one-stage (ImageNet -> target)
and two-stage cross-validations (Tables 2, 5; random and subject-independent folds), Table 3
on stage 2, cross-dataset tests, and the GPU classification benchmark.
Results are tarred into --results every 20 s, so a timeout still returns what finished.
`--tiny` makes every run a few-step smoke run (for a CPU dry run of this exact script).

On the 2-core CPU, with a stage-1 run already made by `training.train`:

    python -m training.campaign --runs runs/cpu --stage1 runs/s1_cpu --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

PY = sys.executable


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/gpu")
    ap.add_argument("--results", default=None, help="folder for the tarred results (default: RUNS/results)")
    ap.add_argument("--stage1-epochs", type=int, default=60)
    ap.add_argument("--stage1-seconds", type=float, default=220, help="wall-time budget of each stage-1 run")
    ap.add_argument("--cv-epochs", type=int, default=30)
    ap.add_argument("--tiny", action="store_true", help="smoke settings: 1 epoch on a few images, 2 folds")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    ap.add_argument("--schedule", default="cosine", help="stage-1 learning-rate schedule (step = the paper's)")
    ap.add_argument("--stage1-lr", type=float, default=0.02)
    ap.add_argument("--stage2-lr", type=float, default=0.045)
    ap.add_argument("--stage2-lr-alt", type=float, default=0.01, help="also run the main CVs at this lr (0: no)")
    ap.add_argument("--stage1", default=None,
                    help="an existing stage-1 run directory to start stage 2 from (skips phase A; linked as s1_center)")
    ap.add_argument("--eval-flip", action="store_true",
                    help="stage 2 and cross-dataset tests score each face with its mirror image averaged in "
                         "(as ExpressionClassifier's default flip_average does)")
    ap.add_argument("--eval-crops", action="store_true",
                    help="... and with its five 90%% crops averaged in (ExpressionClassifier's crop_average)")
    ap.add_argument("--jobs", type=int, default=0, help="at most this many processes at once (0: all at once)")
    ap.add_argument("--stage2-args", default="",
                    help="more training.experiments options for every stage-2 and cross-dataset run, e.g. "
                         "\"--backbone-lr-mult 0.1 --probe-epochs 5 --swa-from 20 --interp 0.7 --inner-val 0.2 "
                         "--label-smoothing 0.1 --center-reduction sum\"")
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    results = Path(a.results or runs / "results")
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(a.threads))
    t0 = time.time()
    procs: dict[str, tuple[subprocess.Popen, float]] = {}
    done: dict[str, tuple[int, float]] = {}

    def start(name, args):
        while a.jobs and len(procs) >= a.jobs:
            poll()
            time.sleep(1)
        log = open(runs / f"{name}.log", "w")
        p = subprocess.Popen([PY, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        procs[name] = (p, time.time())
        print(f"[{time.time() - t0:6.1f}s] start {name}: {' '.join(args)}", flush=True)

    def poll():
        for name, (p, ts) in list(procs.items()):
            rc = p.poll()
            if rc is not None:
                done[name] = (rc, time.time() - ts)
                del procs[name]
                print(f"[{time.time() - t0:6.1f}s] done  {name}: rc {rc} in {done[name][1]:.1f}s", flush=True)

    def wait_for(*names):
        while any(n in procs for n in names):
            poll()
            time.sleep(1)
        poll()

    stop = threading.Event()
    lock = threading.Lock()

    def pack():
        with lock:
            _pack()

    def _pack():
        tmp = results / "results.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for f in sorted(runs.rglob("*")):
                if f.is_file() and f.suffix in (".json", ".png", ".log", ".txt") and results not in f.parents:
                    tar.add(f, arcname=str(f.relative_to(runs)))
        tmp.replace(results / "results.tgz")

    def packer():
        while not stop.wait(20):
            try:
                pack()
            except Exception as e:  # noqa: BLE001 - keep packing on the next tick
                print("pack failed:", e, flush=True)

    packer_thread = threading.Thread(target=packer, daemon=True)
    packer_thread.start()

    s1 = ["--epochs", str(a.stage1_epochs), "--max-seconds", str(a.stage1_seconds), "--quiet"]
    tta = (["--eval-flip"] if a.eval_flip else []) + (["--eval-crops"] if a.eval_crops else [])
    import shlex

    cv = ["--epochs", str(a.cv_epochs)] + tta + shlex.split(a.stage2_args)
    if a.tiny:
        s1 = ["--epochs", "1", "--limit", "256", "--val-limit", "128", "--quiet"]
        cv = ["--epochs", "1", "--folds", "0"]
    # ---- phase A: stage 1 (cosine schedule fitted to the time budget; candidates for shipping:
    # s1_center and s1_rgbsum, both softmax + center loss; s1_softmax is Table 3's other row)
    stage1 = {"s1_center": [], "s1_softmax": ["--center-lambda", "0"], "s1_rgbsum": ["--first-conv", "rgbsum"]}
    s1 += ["--schedule", a.schedule, "--lr", str(a.stage1_lr)]
    if a.stage1:
        stage1 = {}
        link = runs / "s1_center"
        if not link.exists():
            link.symlink_to(Path(a.stage1).resolve(), target_is_directory=True)
    for name, extra in stage1.items():
        start(name, ["training.train", "--out", str(runs / name), "--seed", "0", *s1, *extra])
    exp = ["training.experiments"]
    s2 = [*cv, "--lr", str(a.stage2_lr)]
    wait_for(*stage1)
    # ---- phase B: stage 2 from the better stage-1 candidate (by PublicTest accuracy)
    import json
    acc = {}
    for n in ("s1_center", "s1_rgbsum"):
        r = runs / n / "result.json"
        if r.exists() and (runs / n / "best.pt").exists():
            acc[n] = json.loads(r.read_text())["val"]["accuracy"]
    jobs = []
    for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
        for by in ("random", "subject"):
            jobs.append((f"cv_{tag}_1s_{by}", [*exp, "cv", "--dataset", ds, "--by", by, "--init", "imagenet",
                                               "--out", str(runs / f"cv_{tag}_1s_{by}"), *s2]))
    if acc:
        pick = max(acc, key=acc.get)
        (runs / "shipped_candidate.txt").write_text(f"{pick} {acc}\n")
        best = runs / pick / "best.pt"
        shutil.copy(best, results / "stage1_best.pt")
        init = ["--init", str(best)]
        for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
            for by in ("random", "subject"):
                jobs.append((f"cv_{tag}_2s_{by}", [*exp, "cv", "--dataset", ds, "--by", by, *init,
                                                   "--out", str(runs / f"cv_{tag}_2s_{by}"), *s2]))
        if a.stage2_lr_alt:  # the paper's stage-2 lr next to a lower one, on the main setups
            alt = [*cv, "--lr", str(a.stage2_lr_alt)]
            for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
                for by in ("random", "subject"):
                    n = f"cv_{tag}_2s_{by}_lr{a.stage2_lr_alt:g}"
                    jobs.append((n, [*exp, "cv", "--dataset", ds, "--by", by, *init, "--out", str(runs / n), *alt]))
        for setup in ("small7", "large6", "large7"):
            for by in ("random", "subject"):
                jobs.append((f"cv_ck{setup}_2s_{by}", [*exp, "cv", "--dataset", f"ckplus:{setup}", "--by", by, *init,
                                                       "--out", str(runs / f"cv_ck{setup}_2s_{by}"), *s2]))
        xe = ["--epochs", "1"] if a.tiny else ["--epochs", str(a.cv_epochs)]
        xe += ["--lr", str(a.stage2_lr)] + tta + shlex.split(a.stage2_args)
        jobs.append(("cross_jaffe_to_ck6", [*exp, "cross", "--source", "jaffe", "--target", "ckplus:small6", *init,
                                            "--out", str(runs / "cross_jaffe_to_ck6"), *xe]))
        jobs.append(("cross_ck6_to_jaffe", [*exp, "cross", "--source", "ckplus:small6", "--target", "jaffe", *init,
                                            "--out", str(runs / "cross_ck6_to_jaffe"), *xe]))
        import torch
        if torch.cuda.is_available():
            jobs.append(("bench_gpu", ["bench.gpu_classify", "--checkpoint", str(best), "--json",
                                       str(runs / "bench_gpu.json")]))
    # Table 3 on stage 2: softmax only in both stages when a softmax stage 1 exists; else softmax
    # only in stage 2, from the same center-loss stage-1 model as the center-loss column.
    sm = runs / "s1_softmax" / "best.pt"
    sm_tag = "softmax"
    if not sm.exists() and acc:
        sm, sm_tag = best, "s2softmax"
    if sm.exists():
        for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
            n = f"cv_{tag}_2s_{sm_tag}_random"
            jobs.append((n, [*exp, "cv", "--dataset", ds, "--by", "random", "--init", str(sm), "--center-lambda", "0",
                             "--out", str(runs / n), *s2]))
    for name, args in jobs:
        start(name, args)
    while procs:
        poll()
        time.sleep(1)
    stop.set()
    packer_thread.join()
    (runs / "campaign_summary.txt").write_text(
        "\n".join(f"{n}: rc {rc} {s:.1f}s" for n, (rc, s) in done.items()) + f"\ntotal {time.time() - t0:.1f}s\n")
    pack()
    print(f"campaign done in {time.time() - t0:.1f}s; failed: {[n for n, (rc, _) in done.items() if rc]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

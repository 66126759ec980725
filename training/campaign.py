"""All training runs of the paper reproduction in one go, as parallel processes (GPU machine).

    FER_SHARED=.devcarry/shared python -m training.campaign --runs runs/gpu --results $OUT

Phase A (at once): stage 1 on FER-2013 for the shipped model (center loss, paper schedule)
and its variants (softmax only = Table 3; first conv from summed RGB; cosine schedule), plus
the one-stage (ImageNet -> target) cross-validations of Table 2. Phase B (once the stage-1
model exists): two-stage cross-validations (Tables 2, 5; random and subject-independent
folds), Table 3 on stage 2, cross-dataset tests, and the GPU classification benchmark.
Results are tarred into --results every 20 s, so a timeout still returns what finished.
`--tiny` makes every run a few-step smoke run (for a CPU dry run of this exact script).
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
    cv = ["--epochs", str(a.cv_epochs)]
    if a.tiny:
        s1 = ["--epochs", "1", "--limit", "256", "--val-limit", "128", "--quiet"]
        cv = ["--epochs", "1", "--folds", "0"]
    # ---- phase A
    stage1 = {"s1_center": [], "s1_softmax": ["--center-lambda", "0"], "s1_rgbsum": ["--first-conv", "rgbsum"],
              "s1_cosine": ["--schedule", "cosine", "--lr", "0.02"]}
    for name, extra in stage1.items():
        start(name, ["training.train", "--out", str(runs / name), "--seed", "0", *s1, *extra])
    exp = ["training.experiments"]
    for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
        for by in ("random", "subject"):
            start(f"cv_{tag}_1s_{by}", [*exp, "cv", "--dataset", ds, "--by", by, "--init", "imagenet",
                                        "--out", str(runs / f"cv_{tag}_1s_{by}"), *cv])
    # ---- phase B
    wait_for("s1_center")
    best = runs / "s1_center" / "best.pt"
    if best.exists():
        shutil.copy(best, results / "s1_center_best.pt")
        init = ["--init", str(best)]
        jobs = []
        for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
            for by in ("random", "subject"):
                jobs.append((f"cv_{tag}_2s_{by}", [*exp, "cv", "--dataset", ds, "--by", by, *init,
                                                   "--out", str(runs / f"cv_{tag}_2s_{by}"), *cv]))
        for setup in ("small7", "large6", "large7"):
            for by in ("random", "subject"):
                jobs.append((f"cv_ck{setup}_2s_{by}", [*exp, "cv", "--dataset", f"ckplus:{setup}", "--by", by, *init,
                                                       "--out", str(runs / f"cv_ck{setup}_2s_{by}"), *cv]))
        xe = ["--epochs", "1"] if a.tiny else ["--epochs", str(a.cv_epochs)]
        jobs.append(("cross_jaffe_to_ck6", [*exp, "cross", "--source", "jaffe", "--target", "ckplus:small6", *init,
                                            "--out", str(runs / "cross_jaffe_to_ck6"), *xe]))
        jobs.append(("cross_ck6_to_jaffe", [*exp, "cross", "--source", "ckplus:small6", "--target", "jaffe", *init,
                                            "--out", str(runs / "cross_ck6_to_jaffe"), *xe]))
        for name, args in jobs:
            start(name, args)
        start("bench_gpu", ["bench.gpu_classify", "--checkpoint", str(best), "--json",
                            str(runs / "bench_gpu.json")])
    wait_for("s1_softmax")
    sm = runs / "s1_softmax" / "best.pt"
    if sm.exists():  # Table 3 on stage 2: softmax only in both stages
        for ds, tag in (("ckplus:small6", "ck6"), ("jaffe", "jaffe")):
            start(f"cv_{tag}_2s_softmax_random", [*exp, "cv", "--dataset", ds, "--by", "random", "--init", str(sm),
                                                  "--center-lambda", "0",
                                                  "--out", str(runs / f"cv_{tag}_2s_softmax_random"), *cv])
    wait_for("s1_cosine")
    if (runs / "s1_cosine" / "best.pt").exists():
        shutil.copy(runs / "s1_cosine" / "best.pt", results / "s1_cosine_best.pt")
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

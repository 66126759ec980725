"""Build the compact, git-ignored copy of the shared data that travels to the GPU machine.

    python -m training.devcarry [--out .devcarry/shared]

Mirrors the shared folder layout so the same loaders read it (FER_SHARED=.devcarry/shared):
FER-2013 keeps the original JPEG files byte for byte but stores their common header once
(`prefix`), JAFFE is stored as faces already detected and cropped here with the package's
detector, CK+48 as is, and the width-0.75 ImageNet weights in float16. Not for the repo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training import data as D


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=".devcarry/shared")
    ap.add_argument("--shared", default=None)
    ap.add_argument("--widths", type=float, nargs="+", default=[0.75])
    a = ap.parse_args(argv)
    src, out = D.shared_path(a.shared), Path(a.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "weights").mkdir(parents=True, exist_ok=True)
    d = np.load(src / "data" / "fer2013.npz")
    jpeg, off = d["jpeg"], d["offsets"]
    files = [jpeg[x:y].tobytes() for x, y in zip(off[:-1], off[1:])]
    n = min(len(f) for f in files)
    k = 0  # longest common prefix of all files
    first = files[0]
    while k < n and all(f[k] == first[k] for f in files[:2000]):
        k += 1
    while not all(f[:k] == first[:k] for f in files):
        k -= 1
    bodies = [f[k:] for f in files]
    new_off = np.concatenate([[0], np.cumsum([len(b) for b in bodies])]).astype(np.int64)
    np.savez(out / "data" / "fer2013.npz", prefix=np.frombuffer(first[:k], np.uint8),
             jpeg=np.frombuffer(b"".join(bodies), np.uint8), offsets=new_off, labels=d["labels"],
             split=d["split"], class_names=d["class_names"], split_names=d["split_names"])
    j = D.load_jaffe(src / "data" / "jaffe.npz")
    np.savez_compressed(out / "data" / "jaffe.npz", faces=j.images, labels=j.labels, subject=j.subject,
                        detector=j.info["detector"])
    c = np.load(src / "data" / "ckplus48.npz")
    np.savez_compressed(out / "data" / "ckplus48.npz", **{k2: c[k2] for k2 in c.files if k2 != "paths"})
    from training.model import default_imagenet_path
    for w in a.widths:
        p = default_imagenet_path(w, src)
        wt = np.load(p)
        np.savez(out / "weights" / p.name, **{k2: wt[k2].astype(np.float16) for k2 in wt.files})
    tot = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: common JPEG header {k} bytes, JAFFE undetected {j.info['undetected']}, "
          f"{tot / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

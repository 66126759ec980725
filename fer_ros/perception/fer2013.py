"""FER-2013 as the shared npz stores it: one home for its decoding, used by `fer-ros bag from-dataset`
and by training (which must not be imported by the package, so the decoder lives here).

Layout (shared/README.md): `jpeg` (uint8, all files concatenated), `offsets` ([N+1] into it),
`labels` ([N], LABELS order), `split` ([N], indices into `split_names`). A compact copy
(training.devcarry) stores the JPEG header that all files share once, as `prefix`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SPLITS = ("Training", "PublicTest", "PrivateTest")


def read_npz(path, split: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 [N,48,48] images, int64 [N] labels, int64 [N] split as indices into SPLITS) of the
    whole set, or of one split by name. FileNotFoundError / ValueError say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FER-2013 not found at {path}")
    try:
        d = np.load(path, allow_pickle=False)  # a crafted npz must not run code
        jpeg, off, labels = d["jpeg"], d["offsets"], d["labels"]
        names = [str(s) for s in d["split_names"]]
        split_of = d["split"]
        prefix = d["prefix"].tobytes() if "prefix" in d.files else b""
    except KeyError as exc:
        raise ValueError(f"{path} is not a FER-2013 npz (missing {exc})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    unknown = sorted(set(names) - set(SPLITS))
    if unknown:
        raise ValueError(f"{path} has unknown splits {unknown}; expected some of {', '.join(SPLITS)}")
    if split is None:
        idx = np.arange(len(labels))
    elif split not in names:
        raise ValueError(f"{path} has no split {split!r}; it has {', '.join(names)}")
    else:
        idx = np.flatnonzero(split_of == names.index(split))

    def decode(i: int) -> np.ndarray:
        data = jpeg[off[i]:off[i + 1]]
        if prefix:
            data = np.frombuffer(prefix + data.tobytes(), np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path}: image {i} is not a decodable JPEG")
        return image

    images = np.stack([decode(int(i)) for i in idx]) if len(idx) else np.zeros((0, 48, 48), np.uint8)
    splits = np.array([SPLITS.index(names[s]) for s in split_of[idx]], np.int64)
    return images, labels[idx].astype(np.int64), splits

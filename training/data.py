"""Datasets for training and evaluation: FER-2013, JAFFE, CK+ (shared npz files and the
original layouts users download), plus the augmentation.

Every loader returns a `FaceSet`: `images` uint8 [N,H,W] where the whole image is the face
box (FER-2013 and CK+48 are already 48x48 crops; JAFFE faces are detected with the
package's own detector and cropped with `fer_ros.perception.preprocess.crop_faces`), integer `labels`
indexing `class_names`, and `subject` / `split` where the data has them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fer_ros import LABELS
from fer_ros.perception import preprocess as P
from fer_ros.perception.fer2013 import SPLITS as FER_SPLITS
from fer_ros.perception.fer2013 import read_npz
from fer_ros.perception.preprocess import FACE_SIZE, Framing, crop_face, crop_faces, framing_for

REPO = Path(__file__).resolve().parents[1]

#: CK+ class names (CK+48 `class_names` and the Emotion-file codes 1..7) -> the package's names.
CK_TO_LABEL = {"anger": "angry", "contempt": "contempt", "disgust": "disgust", "fear": "fear",
               "happy": "happy", "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}
#: Emotion-file codes of the original CK+ release.
CK_CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
CK6 = ("angry", "disgust", "fear", "happy", "sad", "surprise")
CK7 = CK6 + ("contempt",)
CK8 = CK7 + ("neutral",)


def shared_path(path=None) -> Path:
    """The shared data folder: `path`, else $FER_SHARED, else ../shared beside the repo."""
    return Path(path or os.environ.get("FER_SHARED") or REPO.parent / "shared").resolve()


@dataclass
class FaceSet:
    images: np.ndarray  # uint8 [N,H,W], the whole image is the face box
    labels: np.ndarray  # int64 [N] into class_names
    class_names: tuple
    subject: np.ndarray | None = None  # str [N]
    split: np.ndarray | None = None  # int [N] (FER-2013: 0 Training, 1 PublicTest, 2 PrivateTest)
    group: np.ndarray | None = None  # int [N]: samples of one group (a CK+ sequence) stay in one fold
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "FaceSet":
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return FaceSet(self.images[idx], self.labels[idx], self.class_names, pick(self.subject),
                       pick(self.split), pick(self.group), dict(self.info))

    def head(self, n: int) -> "FaceSet":
        """The first `n` samples, all of them when n <= 0 (smoke runs' `--limit`)."""
        return self if n <= 0 else self.subset(np.arange(min(n, len(self))))

    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.class_names)).tolist()

    def faces48(self) -> np.ndarray:
        """uint8 [N,48,48] evaluation inputs (whole image = box, no augmentation)."""
        if self.images.shape[1:] == (FACE_SIZE, FACE_SIZE):
            return self.images
        return np.stack([crop_face(im, (0, 0, im.shape[1], im.shape[0])) for im in self.images])

    def relabel(self, class_names) -> "FaceSet":
        """Map to another class list by name, dropping samples whose class it lacks."""
        class_names = tuple(class_names)
        lut = np.array([class_names.index(c) if c in class_names else -1 for c in self.class_names])
        new = lut[self.labels]
        keep = np.flatnonzero(new >= 0)
        out = self.subset(keep)
        out.labels = new[keep].astype(np.int64)
        out.class_names = class_names
        return out


# ---------------------------------------------------------------- FER-2013


def load_fer2013(path, split: str | None = None) -> FaceSet:
    """FER-2013 from the shared npz (JPEG bytes + offsets) or the original `fer2013.csv`
    (columns emotion, pixels, Usage). `split` ("Training", "PublicTest", "PrivateTest") keeps one
    split in file order, which teacher files and `--limit` rely on; the npz decodes only it.
    FaceSet.split: 0 Training, 1 PublicTest, 2 PrivateTest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FER-2013 not found at {path}")
    if split is not None and split not in FER_SPLITS:
        raise ValueError(f"no FER-2013 split {split!r}; there are {', '.join(FER_SPLITS)}")
    if path.suffix == ".csv":
        fs = _load_fer_csv(path)
        return fs if split is None else fs.subset(np.flatnonzero(fs.split == FER_SPLITS.index(split)))
    images, labels, splits = read_npz(path, split)  # the package's one FER-2013 decoder
    return FaceSet(images, labels.astype(np.int64), LABELS, split=splits.astype(np.int64), info={"source": str(path)})


def fer2013(split: str | None = None, shared=None) -> FaceSet:
    """FER-2013 (whole, or one split) from the shared folder (see shared_path)."""
    return load_fer2013(shared_path(shared) / "data" / "fer2013.npz", split)


def _load_fer_csv(path: Path) -> FaceSet:
    imgs, labels, split = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not the fer2013.csv layout, missing columns {sorted(missing)}")
        for row in reader:
            px = np.array(row["pixels"].split(), np.uint8)
            if px.size != 48 * 48:
                raise ValueError(f"{path}: line {reader.line_num} has {px.size} pixels, expected 2304")
            imgs.append(px.reshape(48, 48))
            labels.append(int(row["emotion"]))
            split.append(FER_SPLITS.index(row["Usage"]))
    return FaceSet(np.stack(imgs), np.array(labels, np.int64), LABELS, split=np.array(split, np.int64),
                   info={"source": str(path)})


def write_fer_csv(fs: FaceSet, path) -> None:
    """Write a FaceSet in the original fer2013.csv layout (for users' tools and tests)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for im, y, s in zip(fs.images, fs.labels, fs.split):
            w.writerow([int(y), " ".join(map(str, im.reshape(-1).tolist())), FER_SPLITS[int(s)]])


# ---------------------------------------------------------------- JAFFE
def detect_largest(detector, image) -> np.ndarray | None:
    """Largest (x,y,w,h) box the package's detector finds, or None."""
    boxes = detector.detect(image)
    if len(boxes) == 0:
        return None
    return boxes[np.argmax(boxes[:, 2] * boxes[:, 3]), :4]


def load_jaffe(path, detector: str = "haar", size: int = 96, framing: Framing | None = None,
               **det_params) -> FaceSet:
    """JAFFE: detect the face in every 256x256 image with fer_ros.perception.detectors and crop it with
    fer_ros.perception.preprocess.crop_faces, framed like FER-2013 (`framing`, default: the detector's
    measured one), at `size` (96 keeps detail for the augmentation; evaluation resizes the
    whole crop to 48x48 exactly as inference does). Images where no face is found fall back
    to the central 60% (counted in info["undetected"])."""
    from fer_ros.perception.detectors import make_detector
    d = np.load(path)
    if "faces" in d:  # pre-cropped by training.devcarry with this same function
        return FaceSet(d["faces"], d["labels"].astype(np.int64), LABELS, subject=d["subject"].astype(str),
                       info={"source": str(path), "detector": str(d["detector"]), "undetected": []})
    det = make_detector(detector, **det_params)
    framing = framing or framing_for(detector)
    out, boxes, undetected = [], [], []
    for i, im in enumerate(d["images"]):
        box = detect_largest(det, im)
        if box is None:
            h, w = im.shape[:2]
            box = np.array([0.2 * w, 0.2 * h, 0.6 * w, 0.6 * h], np.float32)
            undetected.append(str(d["filenames"][i]))
        boxes.append(box)
        out.append(crop_faces(im, [box], framing, size=size)[0])
    names = tuple(str(c) for c in d["class_names"])
    lut = np.array([LABELS.index(n) for n in names])
    return FaceSet(np.stack(out), lut[d["labels"]].astype(np.int64), LABELS, subject=d["subject"].astype(str),
                   info={"source": str(path), "detector": detector, "framing": framing.to_dict(),
                         "boxes": np.array(boxes).tolist(),
                         "undetected": undetected})


# ---------------------------------------------------------------- CK+
CK_SETUPS = {
    # name: (frames, classes). "small" = last frame of each sequence, "large" = last three.
    "small6": ("last", CK6), "small7": ("last", CK7), "large6": ("last3", CK6), "large7": ("last3", CK7),
}
#: Setups the paper uses that the shared CK+48 cannot form, and why.
CK_UNAVAILABLE = {
    "small8/large8": "8 classes need neutral faces (the onset frames), which CK+48 does not include; "
                     "load_ckplus_folder() forms them from the original CK+ release",
}


def load_ckplus48(path, setup: str = "small6") -> FaceSet:
    """CK+48 crops in one of CK_SETUPS; `group` is the sequence, `subject` the person."""
    if setup not in CK_SETUPS:
        raise ValueError(f"unknown CK+ setup {setup!r}; choose from {sorted(CK_SETUPS)} "
                         f"(not formable from CK+48: {CK_UNAVAILABLE})")
    frames, classes = CK_SETUPS[setup]
    d = np.load(path)
    names = [CK_TO_LABEL[str(c)] for c in d["class_names"]]
    lab = np.array([names.index(n) for n in names])[d["labels"]]
    keep = d["is_last_frame"] if frames == "last" else np.ones(len(lab), bool)
    seq = np.unique(np.char.add(d["subject"].astype(str), d["sequence"].astype(str)), return_inverse=True)[1]
    fs = FaceSet(d["images"], lab.astype(np.int64), tuple(names), subject=d["subject"].astype(str),
                 group=seq.reshape(-1), info={"source": str(path), "setup": setup}).subset(np.flatnonzero(keep))
    return fs.relabel(classes)


def load_ckplus_folder(root, setup: str = "small8", detector: str = "haar", size: int = 96,
                       **det_params) -> FaceSet:
    """The original CK+ release: root/cohn-kanade-images/Sxxx/nnn/*.png and
    root/Emotion/Sxxx/nnn/*_emotion.txt (codes 0 neutral .. 7 surprise; only labelled
    sequences are used). "small*": the last frame, "large*": the last three; 8-class setups
    add the first (neutral) frame of each labelled sequence. Faces are detected with the
    package's detector (`whole` for pre-cropped frames) and cropped at `size`."""
    from fer_ros.perception.detectors import make_detector
    frames, ncls = setup[:5], int(setup[5:])
    classes = {6: CK6, 7: CK7, 8: CK8}.get(ncls)
    if frames not in ("small", "large") or classes is None:
        raise ValueError(f"setup must be small6/7/8 or large6/7/8, got {setup!r}")
    root = Path(root)
    emo_root, img_root = root / "Emotion", root / "cohn-kanade-images"
    if not emo_root.is_dir() or not img_root.is_dir():
        raise FileNotFoundError(f"{root}: expected the CK+ folders 'Emotion' and 'cohn-kanade-images'")
    det = make_detector(detector, **det_params)
    framing = framing_for(detector)
    imgs, labels, subj, group, undetected = [], [], [], [], 0
    for k, emo in enumerate(sorted(emo_root.glob("S*/*/*_emotion.txt"))):
        code = int(float(emo.read_text().split()[0]))
        seq_dir = img_root / emo.parent.parent.name / emo.parent.name
        pngs = sorted(seq_dir.glob("*.png"))
        if not pngs:
            continue
        picks = [(p, CK_TO_LABEL[CK_CODES[code]]) for p in pngs[-(1 if frames == "small" else 3):]]
        if ncls == 8:
            picks.append((pngs[0], "neutral"))
        for p, name in picks:
            if name not in classes:
                continue
            im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if im is None:
                raise ValueError(f"cannot read {p}")
            box = detect_largest(det, im)
            if box is None:
                undetected += 1
                h, w = im.shape
                box = (0.2 * w, 0.2 * h, 0.6 * w, 0.6 * h)
            imgs.append(crop_faces(im, [box], framing, size=size)[0])
            labels.append(classes.index(name))
            subj.append(emo.parent.parent.name)
            group.append(k)
    if not imgs:
        raise ValueError(f"{root}: no labelled CK+ sequences found")
    return FaceSet(np.stack(imgs), np.array(labels, np.int64), classes, subject=np.array(subj),
                   group=np.array(group), info={"source": str(root), "setup": setup, "undetected": undetected})


# ---------------------------------------------------------------- folds
def kfold(fs: FaceSet, k: int = 5, by: str = "random", seed: int = 0) -> list[np.ndarray]:
    """Fold index per sample -> list of k test-index arrays.

    by="random": the paper's protocol, samples shuffled (but the frames of one CK+ sequence
    kept together, so a fold never tests on a near-copy of a training frame);
    by="subject": subject-independent, all images of a person in one fold (subjects are
    dealt to folds largest first, to balance fold sizes).
    """
    rng = np.random.default_rng(seed)
    n = len(fs)
    if by == "random":
        units = fs.group if fs.group is not None else np.arange(n)
    elif by == "subject":
        if fs.subject is None:
            raise ValueError("this dataset has no subject ids: use by='random'")
        units = np.unique(fs.subject, return_inverse=True)[1].reshape(-1)
    else:
        raise ValueError(f"by must be 'random' or 'subject', got {by!r}")
    uniq = np.unique(units)
    rng.shuffle(uniq)
    fold_of = {}
    if by == "subject":
        sizes = {u: int((units == u).sum()) for u in uniq}
        load = np.zeros(k)
        for u in sorted(uniq, key=lambda u: -sizes[u]):  # stable after the shuffle
            f = int(np.argmin(load))
            fold_of[u] = f
            load[f] += sizes[u]
    else:
        for i, u in enumerate(uniq):
            fold_of[u] = i % k
    f = np.array([fold_of[u] for u in units])
    return [np.flatnonzero(f == i) for i in range(k)]


# ---------------------------------------------------------------- augmentation
#: How training crops are placed (TrainConfig.jitter):
#: "area": the paper's, a random crop of 85-100% of the face's area (min_scale**2 .. 1), anywhere inside it;
#: "inside": 85-100% of the side (min_scale .. 1), anywhere inside (what runs before the framing jitter used);
#: "framing": the FER-2013 frame jittered the way detector boxes vary: side scale log-uniform in
#:     scale_range, centre shifted up to +-shift of the side in x and y, border pixels repeated
#:     where the crop leaves the image (as at run time: fer_ros.perception.preprocess.crop_square).
JITTERS = ("area", "inside", "framing")


def photometric(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma (0.7-1.4), contrast (x0.6-1.4 about mid-grey), brightness (+-30) and, with
    probability 0.25, a Gaussian blur (sigma 0.4-1.2 px): the lighting and focus of a robot's camera."""
    g = np.exp(rng.uniform(np.log(0.7), np.log(1.4)))
    c, b = rng.uniform(0.6, 1.4), rng.uniform(-30, 30)
    x = np.arange(256, dtype=np.float32) / 255.0
    lut = np.clip(255.0 * x ** g * c + 128.0 * (1 - c) + b, 0, 255).astype(np.uint8)
    out = cv2.LUT(face, lut)
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    return out


def augment(images: np.ndarray, rng: np.random.Generator, min_scale: float = 0.85, flip: bool = True,
            size: int = FACE_SIZE, rotate: float = 0.0, erase: float = 0.0, jitter: str = "area",
            scale_range=(0.85, 1.3), shift: float = 0.1, photo: bool = False) -> np.ndarray:
    """Training views of uint8 faces [N,H,W] (each whole image is the face frame) -> [N,48,48]:
    a crop placed per `jitter` (see JITTERS), cut and resized with the package's own
    `crop_square`, and a horizontal flip with probability 1/2.

    Optional, off by default (the paper's augmentation is crop + flip):
    rotate: rotate each crop by a uniform angle in [-rotate, rotate] degrees about its centre;
    erase: with this probability, fill one random rectangle (2-33% of the face, aspect 0.3-3.3)
        with uniform noise (random erasing, Zhong et al. 2020), so that no single region
        (the mouth, say) decides alone;
    photo: random lighting and blur (`photometric`)."""
    if jitter not in JITTERS:
        raise ValueError(f"jitter must be one of {JITTERS}, got {jitter!r}")
    n, h, w = images.shape
    side0 = float(min(h, w))
    if jitter == "framing":
        lo, hi = scale_range
        s = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        cx = w / 2 + rng.uniform(-shift, shift, n) * side0
        cy = h / 2 + rng.uniform(-shift, shift, n) * side0
    else:
        s = np.sqrt(rng.uniform(min_scale ** 2, 1.0, n)) if jitter == "area" else rng.uniform(min_scale, 1.0, n)
        cx = s * side0 / 2 + rng.uniform(0, 1, n) * (w - s * side0)
        cy = s * side0 / 2 + rng.uniform(0, 1, n) * (h - s * side0)
    angles = rng.uniform(-rotate, rotate, n) if rotate > 0 else np.zeros(n)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        out[i] = P.crop_square(images[i], cx[i], cy[i], s[i] * side0, size, angles[i])
        if photo:
            out[i] = photometric(out[i], rng)
    if flip:
        f = rng.random(n) < 0.5
        out[f] = out[f, :, ::-1]
    if erase > 0:
        for i in np.flatnonzero(rng.random(n) < erase):
            area = rng.uniform(0.02, 1 / 3) * size * size
            aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3)))
            eh = int(min(size, round(np.sqrt(area * aspect))))
            ew = int(min(size, round(np.sqrt(area / aspect))))
            ey, ex = rng.integers(0, size - eh + 1), rng.integers(0, size - ew + 1)
            out[i, ey:ey + eh, ex:ex + ew] = rng.integers(0, 256, (eh, ew), dtype=np.uint8)
    return out

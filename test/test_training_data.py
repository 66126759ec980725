"""Dataset loaders return the counts documented in shared/README.md; folds and augmentation."""

import cv2
import numpy as np
import pytest

from conftest import need_shared
from fer_ros.perception.preprocess import crop_face
from training import data as D


@pytest.fixture(scope="module")
def fer():
    return D.load_fer2013(need_shared("data", "fer2013.npz"))


def test_fer2013_counts(fer):
    assert fer.images.shape == (28709 + 3589, 48, 48) and fer.images.dtype == np.uint8
    assert fer.subset(fer.split == 0).counts() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert fer.subset(fer.split == 1).counts() == [467, 56, 496, 895, 653, 415, 607]


def test_fer2013_csv_layout_round_trip(fer, tmp_path):
    idx = np.r_[0:40, len(fer) - 20:len(fer)]
    small = fer.subset(idx)
    D.write_fer_csv(small, tmp_path / "fer2013.csv")
    back = D.load_fer2013(tmp_path / "fer2013.csv")
    assert np.array_equal(back.images, small.images)
    assert np.array_equal(back.labels, small.labels) and np.array_equal(back.split, small.split)
    (tmp_path / "bad.csv").write_text("emotion,pixels\n0,1 2 3\n")
    with pytest.raises(ValueError, match="Usage"):
        D.load_fer2013(tmp_path / "bad.csv")
    public = D.load_fer2013(tmp_path / "fer2013.csv", "PublicTest")  # one split, from the csv too
    assert np.array_equal(public.images, small.images[small.split == 1]) and set(public.split) == {1}


def test_one_fer2013_split_keeps_file_order(fer):
    """Teacher rows and `--limit` assume a split comes in file order: the one-split loader (which
    decodes only that split) gives the same faces, labels and order as filtering the whole set."""
    for name, k in (("Training", 0), ("PublicTest", 1)):
        part = D.fer2013(name, need_shared())
        whole = fer.subset(np.flatnonzero(fer.split == k))
        assert np.array_equal(part.images, whole.images) and np.array_equal(part.labels, whole.labels)
        assert set(part.split) == {k}
    with pytest.raises(ValueError, match="no FER-2013 split 'Validation'"):
        D.fer2013("Validation", need_shared())


def test_jaffe_detected_faces_and_counts():
    j = D.load_jaffe(need_shared("data", "jaffe.npz"))
    assert j.counts() == [30, 29, 32, 31, 31, 30, 30]
    assert j.info["undetected"] == []  # the package's Haar detector finds every JAFFE face
    assert len(set(j.subject)) == 10
    boxes = np.array(j.info["boxes"])
    # a face, not the whole 256x256 image: boxes are a plausible face size and inside the image
    assert (boxes[:, 2] > 60).all() and (boxes[:, 2] < 220).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 256).all()
    assert j.faces48().shape == (213, 48, 48)


def test_ckplus_setups():
    p = need_shared("data", "ckplus48.npz")
    small6 = D.load_ckplus48(p, "small6")
    assert len(small6) == 309 and len(set(small6.subject)) == 106
    assert small6.class_names == D.CK6
    large7 = D.load_ckplus48(p, "large7")
    assert len(large7) == 981 and len(set(large7.subject)) == 118
    assert large7.counts()[large7.class_names.index("contempt")] == 54
    assert len(D.load_ckplus48(p, "small7")) == 327
    with pytest.raises(ValueError, match="neutral"):
        D.load_ckplus48(p, "small8")


def test_folds_subject_independent_and_sequences_together():
    fs = D.load_ckplus48(need_shared("data", "ckplus48.npz"), "large6")
    folds = D.kfold(fs, 5, "subject")
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(fs)))
    subj = [set(fs.subject[f]) for f in folds]
    for i in range(5):
        for k in range(i + 1, 5):
            assert not subj[i] & subj[k]
    rnd = D.kfold(fs, 5, "random")
    where = np.empty(len(fs), int)
    for i, f in enumerate(rnd):
        where[f] = i
    for g in np.unique(fs.group):  # the 3 frames of a sequence share a fold
        assert len(set(where[fs.group == g])) == 1
    # random folds mix subjects across folds (that is what makes them easier)
    assert sum(len(set(fs.subject[f])) for f in rnd) > len(set(fs.subject))


def test_augment_crops_inside_the_box(fer):
    imgs = fer.images[:64]
    same = D.augment(imgs, np.random.default_rng(0), min_scale=1.0, flip=False)
    assert np.array_equal(same, imgs)  # 100% crop, no flip = the face itself
    rng = np.random.default_rng(1)
    aug = D.augment(imgs, rng, min_scale=0.85)
    assert aug.shape == (64, 48, 48) and aug.dtype == np.uint8
    assert not np.array_equal(aug, imgs)
    # each augmented face matches some crop of 85-100% of its image (or its mirror) better than
    # another image does: check one by brute force over scale/offset
    im = imgs[3]
    best = min(np.abs(crop_face(im, (x, y, s, s)).astype(int) - aug[3]).mean()
               for s in range(41, 49) for x in range(0, 49 - s) for y in range(0, 49 - s))
    best_f = min(np.abs(crop_face(im[:, ::-1].copy(), (x, y, s, s)).astype(int) - aug[3]).mean()
                 for s in range(41, 49) for x in range(0, 49 - s) for y in range(0, 49 - s))
    assert min(best, best_f) < 6


def test_ckplus_original_folder_layout(tmp_path):
    """The original CK+ layout (cohn-kanade-images/ + Emotion/ with codes 0..7), rebuilt here from
    CK+48's own files for 6 sequences (their 3 frames each; faces already cropped -> `whole`)."""
    import cv2
    d = np.load(need_shared("data", "ckplus48.npz"))
    names = [str(c) for c in d["class_names"]]
    seqs = []
    for i in range(len(d["labels"])):
        key = (str(d["subject"][i]), int(d["sequence"][i]))
        if key not in seqs:
            seqs.append(key)
        if len(seqs) == 6 and key not in seqs[:6]:
            break
    seqs = seqs[:6]
    expect = {}
    for i in range(len(d["labels"])):
        s, q = str(d["subject"][i]), int(d["sequence"][i])
        if (s, q) not in seqs:
            continue
        folder = tmp_path / "cohn-kanade-images" / s / f"{q:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{s}_{q:03d}_{int(d['frame'][i]):08d}.png"), d["images"][i])
        if d["is_last_frame"][i]:  # CK+ has one Emotion file per sequence, named after its last frame
            emo = tmp_path / "Emotion" / s / f"{q:03d}"
            emo.mkdir(parents=True, exist_ok=True)
            code = D.CK_CODES.index(names[d["labels"][i]])
            (emo / f"{s}_{q:03d}_{int(d['frame'][i]):08d}_emotion.txt").write_text(f"   {code:.7e}\n")
        expect[(s, q)] = D.CK_TO_LABEL[names[d["labels"][i]]]
    small = D.load_ckplus_folder(tmp_path, "small7", detector="whole")
    large = D.load_ckplus_folder(tmp_path, "large8", detector="whole")
    assert len(small) == 6 and len(large) == 6 * 3 + 6  # + one neutral (first) frame per sequence
    assert sorted(small.class_names[k] for k in small.labels) == sorted(expect.values())
    assert large.counts()[large.class_names.index("neutral")] == 6
    assert small.images.shape[1:] == (96, 96)
    with pytest.raises(FileNotFoundError, match="Emotion"):
        D.load_ckplus_folder(tmp_path / "nope", "small6")


def test_augment_rotation_and_erasing(fer):
    imgs = fer.images[:200]
    plain = D.augment(imgs, np.random.default_rng(5), min_scale=1.0, flip=False)
    # rotation: a pure rotation of each face (checked against OpenCV for one angle range), erasing off
    rot = D.augment(imgs, np.random.default_rng(5), min_scale=1.0, flip=False, rotate=10.0)
    assert rot.shape == plain.shape and rot.dtype == np.uint8
    diff = np.abs(rot.astype(int) - plain).mean((1, 2))
    assert (diff > 0).mean() > 0.95  # almost every face turned ...
    assert np.median(diff) < 25  # ... by a small angle, not scrambled
    # erasing: with probability 1 every face has a rectangle of noise, 2-33% of its area
    er = D.augment(imgs, np.random.default_rng(5), min_scale=1.0, flip=False, erase=1.0)
    changed = (er != plain).mean((1, 2))
    assert np.all(changed > 0.005) and np.all(changed < 0.34)
    # half the probability: about half the faces untouched
    half = D.augment(imgs, np.random.default_rng(6), min_scale=1.0, flip=False, erase=0.5)
    untouched = np.mean([np.array_equal(a, b) for a, b in zip(half, plain)])
    assert 0.35 < untouched < 0.65
    # reproducible from the generator's seed
    assert np.array_equal(rot, D.augment(imgs, np.random.default_rng(5), min_scale=1.0, flip=False, rotate=10.0))


def test_last_frame_folds_train_on_all_three_frames_of_their_sequences():
    from training.experiments import training_groups

    p = need_shared("data", "ckplus48.npz")
    small6, large6 = D.load_ckplus48(p, "small6"), D.load_ckplus48(p, "large6")
    for test_idx in D.kfold(small6, 5, "random"):
        train_idx = np.setdiff1d(np.arange(len(small6)), test_idx)
        tr = training_groups(small6, train_idx, large6)
        assert len(tr) == 3 * len(train_idx)  # three frames of every training sequence
        assert not set(tr.group) & set(small6.group[test_idx])  # nothing from a tested sequence
        seq_label = dict(zip(small6.group, small6.labels))
        assert all(seq_label[g] == y for g, y in zip(tr.group, tr.labels))
        # the last frames of the training sequences are among the training images
        last = {small6.images[i].tobytes() for i in train_idx}
        assert last <= {im.tobytes() for im in tr.images}
    with pytest.raises(ValueError, match="classes"):
        training_groups(small6, np.arange(10), D.load_ckplus48(p, "large7"))


def test_framing_jitter_off_gives_the_face_itself(fer):
    imgs = fer.images[:32]
    same = D.augment(imgs, np.random.default_rng(0), flip=False, jitter="framing", scale_range=(1.0, 1.0),
                     shift=0.0)
    assert np.array_equal(same, imgs)
    with pytest.raises(ValueError, match="jitter"):
        D.augment(imgs, np.random.default_rng(0), jitter="nope")


def test_training_and_inference_crop_with_one_function(fer, monkeypatch):
    """Training augmentation (every jitter mode), the pipeline and the JAFFE loader all cut faces
    with fer_ros.perception.preprocess.crop_square; the jitter modes draw the crops they promise."""
    from fer_ros.perception import preprocess as P
    from fer_ros.perception.pipeline import ExpressionPipeline

    calls = []
    real = P.crop_square

    def spy(gray, cx, cy, side, size=48, angle=0.0):
        calls.append((gray.shape, cx, cy, side, angle))
        return real(gray, cx, cy, side, size, angle)

    monkeypatch.setattr(P, "crop_square", spy)
    imgs = fer.images[:400]
    D.augment(imgs, np.random.default_rng(0), jitter="area")
    sides = np.array([c[3] for c in calls]) / 48
    assert len(calls) == 400 and sides.min() >= 0.85 - 1e-9 and sides.max() <= 1.0
    assert abs((sides ** 2).mean() - (0.85 ** 2 + 1) / 2) < 0.01  # uniform in area, as the paper crops
    calls.clear()
    D.augment(imgs, np.random.default_rng(0), jitter="framing", scale_range=(0.8, 1.3), shift=0.1, rotate=10)
    c = np.array([c[1:] for c in calls])
    assert c[:, 2].min() >= 0.8 * 48 - 1e-6 and c[:, 2].max() <= 1.3 * 48 + 1e-6 and c[:, 2].max() > 1.2 * 48
    assert np.abs(c[:, :2] - 24).max() <= 4.8 + 1e-6 and np.abs(c[:, 3]).max() <= 10
    calls.clear()
    img = np.full((240, 320), 90, np.uint8)
    img[60:180, 100:220] = cv2.resize(fer.images[0], (120, 120))
    box = np.array([[100, 60, 120, 120, 1.0]], np.float32)

    class Fixed:  # a detector that finds the pasted face where it is
        name = "haar"

        def detect(self, frame):
            return box

    from fer_ros.perception.classifier import ExpressionClassifier
    pipe = ExpressionPipeline(detector=Fixed(), tracking=False,
                              classifier=ExpressionClassifier(backend="onnxruntime", flip_average=False))
    pipe.process(img)
    f = P.FRAMINGS["haar"]
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0][1:4], (160 + f.dx * 120, 120 + f.dy * 120, f.scale * 120))


def test_crop_square_keeps_faces_at_the_edge_square():
    img = np.zeros((100, 100), np.uint8)
    img[:, 50:] = 200  # left half dark, right half bright
    crop = P_crop(img, 0, 50, 40)  # centred on the left edge: half of it lies outside
    assert crop.shape == (48, 48)
    assert crop[:, :20].max() == 0  # the outside repeats the border (dark), nothing squashed in
    full = P_crop(img, 50, 50, 100)
    assert full[:, :22].max() == 0 and full[:, 26:].min() == 200  # the edge stays in the middle


def P_crop(img, cx, cy, side):
    from fer_ros.perception.preprocess import crop_square
    return crop_square(img, cx, cy, side)

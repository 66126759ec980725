"""Face detectors on the real media: recall on photos, no false alarms on face-free video,
faces only after one enters, odd inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import frames, need_shared, read, scene_cut
from fer_ros.perception.detectors import HaarDetector, make_detector

YUNET = ("models", "face_detection_yunet_2026may.onnx")


@pytest.fixture(scope="module")
def haar():
    return make_detector("haar")


@pytest.fixture(scope="module")
def yunet():
    return make_detector("yunet", model=str(need_shared(*YUNET)))


def boxes_ok(b: np.ndarray, shape) -> bool:
    return (b.dtype == np.float32 and b.shape[1] == 5 and (b[:, 2:4] > 0).all() and (b[:, 0] >= 0).all()
            and (b[:, 1] >= 0).all() and (b[:, 0] + b[:, 2] <= shape[1] + 1).all()
            and (b[:, 1] + b[:, 3] <= shape[0] + 1).all() and ((b[:, 4] > 0) & (b[:, 4] <= 1)).all())


@pytest.mark.parametrize("size", [None, (640, 480)])
def test_multi_face_photo(haar, size):
    img = read("multi_face.jpg")
    if size:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    b = haar.detect(img)
    assert 4 <= len(b) <= 5
    assert boxes_ok(b, img.shape)


def test_single_face_photo(haar):
    img = read("single_face.jpg")
    b = haar.detect(img)
    assert len(b) == 1 and boxes_ok(b, img.shape)
    # The face is in the upper-middle part of this portrait, and a plausible size.
    x, y, w, h = b[0, :4]
    assert 0.2 < (x + w / 2) / img.shape[1] < 0.8 and w > 0.15 * img.shape[1]


def test_no_face_video(haar):
    video = frames("no_face.mp4")
    hits = sum(len(haar.detect(f)) > 0 for f in video)
    assert len(video) > 50 and hits <= 0.05 * len(video)


def test_faces_only_after_the_face_enters(haar):
    video = frames("noface_face.mov")
    cut = scene_cut(video)
    found = [len(haar.detect(f)) for f in video[::2]]
    idx = np.arange(0, len(video), 2)
    before, after = np.array(found)[idx < cut], np.array(found)[idx >= cut]
    assert 30 < cut < len(video) - 30
    assert (before == 0).all()
    assert (after > 0).mean() >= 0.9


def test_yunet(yunet):
    assert len(yunet.detect(read("multi_face.jpg"))) >= 4
    b = yunet.detect(read("single_face.jpg"))
    assert len(b) == 1 and boxes_ok(b, read("single_face.jpg").shape)
    assert sum(len(yunet.detect(f)) > 0 for f in frames("no_face.mp4")[::3]) <= 2


def test_gray_bgra_and_odd_sizes_give_the_same_faces(haar):
    img = read("single_face.jpg")[:-1, :-3]  # odd width and height
    ref = haar.detect(img)
    assert len(ref) == 1
    for variant in (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA),
                    cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]):
        b = haar.detect(variant)
        assert len(b) == 1 and np.abs(b[0, :4] - ref[0, :4]).max() < 2


def test_whole_image_detector():
    b = make_detector("whole").detect(np.zeros((48, 40), np.uint8))
    np.testing.assert_array_equal(b, [[0, 0, 40, 48, 1]])


@pytest.mark.parametrize("name", ["default", "haar", "whole"])
def test_empty_frames_raise(name):
    det = make_detector(name)
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((10, 0), np.uint8)):
        with pytest.raises(ValueError, match="empty"):
            det.detect(bad)


def test_tiny_and_tiny_frames(haar):
    face = read("single_face.jpg")
    tiny = cv2.resize(face, (20, 20), interpolation=cv2.INTER_AREA)  # a 20 px frame: too small for a face
    assert len(haar.detect(tiny)) == 0
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[200:216, 300:316] = cv2.resize(face, (16, 16), interpolation=cv2.INTER_AREA)
    assert len(haar.detect(canvas)) == 0  # far below min_size: ignored, no crash


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("retinaface")
    with pytest.raises(ValueError, match="model path"):
        make_detector("yunet")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        make_detector("yunet", model=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="bad parameters"):
        make_detector("haar", neighbours=3)
    bad = tmp_path / "bad.xml"
    bad.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(ValueError, match="bad.xml"):
        HaarDetector(cascade=bad)


def test_detect_near_follows_a_moving_face(haar):
    img = cv2.resize(read("multi_face.jpg"), (640, 480), interpolation=cv2.INTER_AREA)
    full = haar.detect(img)
    near = haar.detect_near(img, full)
    assert len(near) == len(full)
    # every face is found again at almost the same place
    for b in full:
        d = np.abs(near[:, :2] - b[:2]).max(axis=1)
        assert d.min() < 0.2 * b[2]
    # shift the picture by 12 px: the faces are found at their new places
    shifted = np.roll(img, (8, 12), axis=(0, 1))
    moved = haar.detect_near(shifted, full)
    assert len(moved) >= len(full) - 1
    assert np.median(moved[:, 0]) > np.median(full[:, 0]) + 6
    # near boxes on empty background: nothing
    assert len(haar.detect_near(np.full_like(img, 90), full)) == 0


def test_profile_cascade_and_a_looser_search_near_a_tilted_face(haar):
    """A face tilted by 20 degrees: the full scan still finds it, the near search at the normal
    threshold loses it (what happened between scans), the looser one (the pipeline's rescue)
    finds it again in place; `profile` boxes from the mirror image map back onto the frame."""
    img = read("single_face.jpg")
    box = haar.detect(img)
    assert len(box) == 1
    cx, cy = box[0, 0] + box[0, 2] / 2, box[0, 1] + box[0, 3] / 2
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((float(cx), float(cy)), 20, 1.0), img.shape[1::-1],
                         borderMode=cv2.BORDER_REPLICATE)
    assert len(haar.detect_near(rot, box)) == 0
    again = haar.detect_near(rot, box, min_neighbors=2, profile=True)
    assert len(again) == 1 and boxes_ok(again, rot.shape)
    assert np.abs(again[0, :2] + again[0, 2:4] / 2 - [cx, cy]).max() < 0.15 * box[0, 2]
    both = make_detector("haar", profile=True)
    assert both.clone().profile and not haar.profile
    flipped = both.detect(cv2.flip(img, 1))
    assert len(flipped) == 1
    assert abs((img.shape[1] - flipped[0, 0] - flipped[0, 2]) - box[0, 0]) < 0.1 * box[0, 2]
    multi = both.detect(read("multi_face.jpg"))
    assert 4 <= len(multi) <= 5 and boxes_ok(multi, read("multi_face.jpg").shape)


# ------------------------------------------------------------------ mtcnn (issue 16)


@pytest.fixture(scope="module")
def mtcnn():
    import importlib.util

    if importlib.util.find_spec("mtcnn") is None:  # find_spec: importing mtcnn itself needs TensorFlow
        pytest.skip("the PyPI package mtcnn (the mtcnn detector's weights) is not installed: pip install mtcnn")
    try:
        return make_detector("mtcnn")
    except ImportError as exc:  # e.g. no torch
        pytest.skip(str(exc))


def iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_mtcnn_finds_all_five_faces_with_the_one_in_sunglasses(mtcnn):
    """multi_face.jpg at full size: the five faces YuNet finds, one to one, including the man in
    sunglasses (about 212, 61, 90x114) that Haar misses."""
    img = read("multi_face.jpg")
    model = str(need_shared(*YUNET))
    _, ref = cv2.FaceDetectorYN.create(model, "", (img.shape[1], img.shape[0]), 0.6).detect(img)
    assert ref is not None and len(ref) == 5
    b = mtcnn.detect(img)
    assert len(b) == 5 and boxes_ok(b, img.shape)
    overlaps = np.array([[iou(m, r) for r in ref[:, :4]] for m in b[:, :4]])
    assert (overlaps.max(1) > 0.4).all() and len(set(overlaps.argmax(1))) == 5
    sunglasses = [212, 61, 90, 114]
    assert max(iou(m, sunglasses) for m in b[:, :4]) > 0.5
    assert len(mtcnn.detect(cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA))) == 5


def test_mtcnn_single_face_and_no_false_faces(mtcnn):
    img = read("single_face.jpg")
    b = mtcnn.detect(img)
    assert len(b) == 1 and boxes_ok(b, img.shape)
    assert len(mtcnn.detect(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))) == 1  # gray frames work too
    video = frames("no_face.mp4")
    assert len(video) > 50
    assert sum(len(mtcnn.detect(f)) > 0 for f in video[::8]) == 0


def test_mtcnn_by_name_clone_and_parameters(mtcnn):
    img = read("multi_face.jpg")
    det = make_detector("mtcnn", downscale_width=320)
    assert det.name == "mtcnn" and mtcnn.name == "mtcnn"
    np.testing.assert_array_equal(det.clone().detect(img), det.detect(img))
    np.testing.assert_array_equal(det.detect(img), mtcnn.detect(img))  # 320 is the default
    assert len(make_detector("mtcnn", min_size=150).detect(img)) == 0  # all five faces are smaller
    with pytest.raises(ValueError, match="empty"):
        det.detect(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="bad parameters"):
        make_detector("mtcnn", min_neighbors=3)


def test_mtcnn_weights_load_no_other_pickled_objects(mtcnn, tmp_path, monkeypatch):
    """The weight files are pickles: only arrays are built from them, nothing callable."""
    import pickle

    import lz4.frame

    import fer_ros.perception.mtcnn as M

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled a call",))

    (tmp_path / "pnet.lz4").write_bytes(lz4.frame.compress(pickle.dumps([Evil()])))
    monkeypatch.setattr(M, "weights_dir", lambda: tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        M._read_keras_weights("pnet")


def test_mtcnn_without_its_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    import fer_ros.perception.mtcnn as M

    monkeypatch.setattr(M, "_CACHE", {})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mtcnn" else real(name, *a))
    with pytest.raises(ImportError, match="pip install 'mtcnn"):
        make_detector("mtcnn")


def test_mtcnn_follows_known_faces_between_full_scans(mtcnn):
    """detect_near (R-Net and O-Net around the previous boxes, no pyramid) keeps the face of
    single_face.mp4 (turning, a hand over the mouth) frame after frame, on the box a full scan
    gives, and all five faces of multi_face.jpg, the one in sunglasses included; it does not
    invent a face where there is none."""
    video = frames("single_face.mp4")
    boxes, kept, agree = mtcnn.detect(video[0]), 0, []
    assert len(boxes) == 1
    for f in video[1:]:
        near = mtcnn.detect_near(f, boxes)
        assert len(near) <= 1
        if len(near):
            assert boxes_ok(near, f.shape)
            kept, boxes = kept + 1, near
            full = mtcnn.detect(f)
            if len(full):
                agree.append(iou(near[0], full[0]))
    assert kept >= 0.95 * (len(video) - 1), f"{kept} of {len(video) - 1}"
    assert np.median(agree) > 0.7, np.median(agree)
    img = read("multi_face.jpg")
    scan = mtcnn.detect(img)
    near = mtcnn.detect_near(img, scan)
    assert len(near) == 5 and all(max(iou(s, n) for n in near[:, :4]) > 0.7 for s in scan[:, :4])
    empty = frames("no_face.mp4")
    h, w = empty[0].shape[:2]
    guess = np.array([[w / 2 - 60, h / 2 - 60, 120, 120, 1.0]], np.float32)  # a face-sized box, no face
    assert sum(len(mtcnn.detect_near(f, guess)) > 0 for f in empty[::8]) == 0
    assert mtcnn.detect_near(img, np.zeros((0, 5), np.float32)).shape == (0, 5)


def test_pipeline_with_mtcnn_scans_every_detect_interval_frames(mtcnn):
    """With detect_near the pipeline runs MTCNN's full scan only every detect_interval frames,
    as with Haar, and still has the face in (nearly) every frame."""
    from fer_ros.perception.pipeline import ExpressionPipeline

    class NoClassifier:  # detect() never classifies
        model_path, backend = None, "none"

    det = mtcnn.clone()
    scans = []
    full = det.detect
    det.detect = lambda frame: scans.append(1) or full(frame)
    pipe = ExpressionPipeline(detector=det, classifier=NoClassifier(), detect_interval=5)
    video = frames("single_face.mp4")
    found = [len(pipe.detect(f, i / 30.0)) for i, f in enumerate(video)]
    assert sum(k == 1 for k in found) >= 0.95 * len(video), found
    assert len(scans) <= len(video) / 5 + 3, f"{len(scans)} full scans for {len(video)} frames"


def test_mtcnn_patches_cut_from_the_frame_match_crop_and_resize(mtcnn):
    """detect_near's patches (cut from the uint8 frame, resized by OpenCV) show what
    crop_and_resize (detect's exact mtcnn 1.0 sampling) shows, and gray outside the frame."""
    from fer_ros.perception.mtcnn import crop_and_resize, cut_patches

    img = read("multi_face.jpg")
    scan = mtcnn.detect(img)
    boxes = np.c_[scan[:, :2], scan[:, :2] + scan[:, 2:4]]
    rgb = (img[..., ::-1].astype(np.float32) - 127.5) / 128.0
    for size, least in ((24, 0.85), (48, 0.9)):
        cut, exact = cut_patches(img, boxes, size, bgr=True), crop_and_resize(rgb, boxes, size)
        assert cut.shape == exact.shape == (5, size, size, 3) and cut.dtype == np.float32
        corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(cut, exact)]
        assert min(corr) > least, corr
    half_out = cut_patches(img, np.array([[-50.0, 100.0, 50.0, 200.0]]), 24, bgr=True)[0]
    assert np.abs(half_out[:, :11]).max() < 0.01 and half_out[:, 13:].std() > 0.02


def test_default_is_mtcnn_at_320_px_and_haar_with_a_warning_without_it(mtcnn, monkeypatch):
    """The default finds the covered face Haar misses, on one torch thread; where MTCNN's
    packages are missing it says so and is Haar, whose own name (and crop framing) the pipeline
    then uses. Asked for by name, mtcnn has no silent substitute."""
    import torch

    from fer_ros.perception import mtcnn as M
    from fer_ros.perception.preprocess import FRAMINGS, framing_for

    det = make_detector("default")
    assert det.name == "mtcnn" and det.downscale_width == 320 and det.min_size == 30 and det.threads == 1
    before = torch.get_num_threads()
    assert len(det.detect(read("multi_face.jpg"))) == 5
    assert torch.get_num_threads() == before  # the process's own setting is left as it was
    assert make_detector("default", min_size=40).min_size == 40
    assert framing_for("default") == FRAMINGS["mtcnn"] != FRAMINGS["haar"]

    def missing(name):
        raise ImportError("the PyPI package mtcnn is not installed: pip install mtcnn")

    monkeypatch.setattr(M, "load_weights", missing)
    with pytest.warns(UserWarning, match="mtcnn unavailable .*pip install mtcnn.*using haar"):
        fallback = make_detector("default")
    assert fallback.name == "haar" and fallback.downscale_width == 320
    with pytest.raises(ImportError):
        make_detector("mtcnn")

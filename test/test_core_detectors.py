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
def default():
    return make_detector("default")


@pytest.fixture(scope="module")
def yunet():
    return make_detector("yunet", model=str(need_shared(*YUNET)))


def boxes_ok(b: np.ndarray, shape) -> bool:
    return (b.dtype == np.float32 and b.shape[1] == 5 and (b[:, 2:4] > 0).all() and (b[:, 0] >= 0).all()
            and (b[:, 1] >= 0).all() and (b[:, 0] + b[:, 2] <= shape[1] + 1).all()
            and (b[:, 1] + b[:, 3] <= shape[0] + 1).all() and ((b[:, 4] > 0) & (b[:, 4] <= 1)).all())


@pytest.mark.parametrize("size", [None, (640, 480)])
def test_multi_face_photo(default, size):
    img = read("multi_face.jpg")
    if size:
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    b = default.detect(img)
    assert 4 <= len(b) <= 5
    assert boxes_ok(b, img.shape)


def test_single_face_photo(default):
    img = read("single_face.jpg")
    b = default.detect(img)
    assert len(b) == 1 and boxes_ok(b, img.shape)
    # The face is in the upper-middle part of this portrait, and a plausible size.
    x, y, w, h = b[0, :4]
    assert 0.2 < (x + w / 2) / img.shape[1] < 0.8 and w > 0.15 * img.shape[1]


def test_no_face_video(default):
    video = frames("no_face.mp4")
    hits = sum(len(default.detect(f)) > 0 for f in video)
    assert len(video) > 50 and hits <= 0.05 * len(video)


def test_faces_only_after_the_face_enters(default):
    video = frames("noface_face.mov")
    cut = scene_cut(video)
    found = [len(default.detect(f)) for f in video[::2]]
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


def test_gray_bgra_and_odd_sizes_give_the_same_faces(default):
    img = read("single_face.jpg")[:-1, :-3]  # odd width and height
    ref = default.detect(img)
    assert len(ref) == 1
    for variant in (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA),
                    cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]):
        b = default.detect(variant)
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


def test_tiny_and_tiny_frames(default):
    face = read("single_face.jpg")
    tiny = cv2.resize(face, (20, 20), interpolation=cv2.INTER_AREA)  # a 20 px frame: too small for a face
    assert len(default.detect(tiny)) == 0
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[200:216, 300:316] = cv2.resize(face, (16, 16), interpolation=cv2.INTER_AREA)
    assert len(default.detect(canvas)) == 0  # far below min_size: ignored, no crash


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("mtcnn")
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


def test_detect_near_follows_a_moving_face(default):
    img = cv2.resize(read("multi_face.jpg"), (640, 480), interpolation=cv2.INTER_AREA)
    full = default.detect(img)
    near = default.detect_near(img, full)
    assert len(near) == len(full)
    # every face is found again at almost the same place
    for b in full:
        d = np.abs(near[:, :2] - b[:2]).max(axis=1)
        assert d.min() < 0.2 * b[2]
    # shift the picture by 12 px: the faces are found at their new places
    shifted = np.roll(img, (8, 12), axis=(0, 1))
    moved = default.detect_near(shifted, full)
    assert len(moved) >= len(full) - 1
    assert np.median(moved[:, 0]) > np.median(full[:, 0]) + 6
    # near boxes on empty background: nothing
    assert len(default.detect_near(np.full_like(img, 90), full)) == 0


def test_profile_cascade_and_a_looser_search_near_a_tilted_face(default):
    """A face tilted by 20 degrees: the full scan still finds it, the near search at the normal
    threshold loses it (what happened between scans), the looser one (the pipeline's rescue)
    finds it again in place; `profile` boxes from the mirror image map back onto the frame."""
    img = read("single_face.jpg")
    box = default.detect(img)
    assert len(box) == 1
    cx, cy = box[0, 0] + box[0, 2] / 2, box[0, 1] + box[0, 3] / 2
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((float(cx), float(cy)), 20, 1.0), img.shape[1::-1],
                         borderMode=cv2.BORDER_REPLICATE)
    assert len(default.detect_near(rot, box)) == 0
    again = default.detect_near(rot, box, min_neighbors=2, profile=True)
    assert len(again) == 1 and boxes_ok(again, rot.shape)
    assert np.abs(again[0, :2] + again[0, 2:4] / 2 - [cx, cy]).max() < 0.15 * box[0, 2]
    both = make_detector("default", profile=True)
    assert both.clone().profile and not default.profile
    flipped = both.detect(cv2.flip(img, 1))
    assert len(flipped) == 1
    assert abs((img.shape[1] - flipped[0, 0] - flipped[0, 2]) - box[0, 0]) < 0.1 * box[0, 2]
    multi = both.detect(read("multi_face.jpg"))
    assert 4 <= len(multi) <= 5 and boxes_ok(multi, read("multi_face.jpg").shape)

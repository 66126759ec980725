"""FaceTracker: stable ids, never reused, timeouts in stamps and frames, score smoothing; and the
pipeline keeping a face (its id and box) through short detection misses on real media."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import frames, make_onnx_model, read, scene_cut
from fer_ros.perception.classifier import ExpressionClassifier
from fer_ros.perception.pipeline import ExpressionPipeline
from fer_ros.perception.tracking import FaceTracker, iou_matrix

HAPPY = np.array([0.02, 0.01, 0.02, 0.85, 0.03, 0.02, 0.05])
SAD = np.array([0.05, 0.02, 0.08, 0.02, 0.75, 0.03, 0.05])


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [100, 100, 10, 10]])
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [50, 50, 5, 5]])
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    assert m[0, 1] == pytest.approx(1.0) and m[0, 0] == pytest.approx(50 / 150) and m[1].max() == 0
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_ids_stable_for_moving_faces_and_new_faces_get_new_ids():
    t = FaceTracker(smoothing=0.0)
    ids0, _ = t.update([[100, 100, 80, 80], [300, 100, 80, 80]], stamp=0.0)
    assert list(ids0) == [1, 2]
    for k in range(1, 20):  # both walk right 4 px per frame; given in swapped order
        ids, _ = t.update([[300 + 4 * k, 100, 80, 80], [100 + 4 * k, 100, 80, 80]], stamp=k / 30)
        assert list(ids) == [2, 1]
    ids, _ = t.update([[100 + 80, 100, 80, 80], [300 + 80, 100, 80, 80], [500, 300, 60, 60]], stamp=20 / 30)
    assert list(ids) == [1, 2, 3]


def test_timeout_by_stamps_and_ids_never_reused():
    t = FaceTracker(max_age_s=0.5)
    assert t.update([[10, 10, 50, 50]], stamp=0.0)[0][0] == 1
    assert len(t.update([], stamp=0.4)[0]) == 0
    assert t.update([[12, 10, 50, 50]], stamp=0.45)[0][0] == 1  # gap 0.45 s < 0.5 s: same person
    t.update([], stamp=0.6)
    assert t.update([[12, 10, 50, 50]], stamp=1.2)[0][0] == 2  # gap 0.75 s: a new track
    t.reset()
    assert t.update([[12, 10, 50, 50]], stamp=1.3)[0][0] == 3  # reset does not recycle ids
    t.reset(restart_ids=True)  # ... unless asked to, for an unrelated new input
    assert t.update([[12, 10, 50, 50]], stamp=0.0)[0][0] == 1


def test_timeout_by_frames_without_stamps():
    t = FaceTracker(max_age_frames=3)
    assert t.update([[10, 10, 50, 50]])[0][0] == 1
    for _ in range(3):
        t.update([])
    assert t.update([[10, 10, 50, 50]])[0][0] == 1  # missed 3 frames: still alive
    for _ in range(4):
        t.update([])
    assert t.update([[10, 10, 50, 50]])[0][0] == 2


def test_stamp_going_back_resets_tracks():
    t = FaceTracker()
    t.update([[10, 10, 50, 50]], stamp=5.0)
    assert t.update([[10, 10, 50, 50]], stamp=0.0)[0][0] == 2  # bag restarted


def test_smoothing_off_gives_raw_scores():
    t = FaceTracker(smoothing=0.0)
    for k, p in enumerate([HAPPY, SAD, HAPPY]):
        _, s = t.update([[10, 10, 50, 50]], [p], stamp=k)
        np.testing.assert_allclose(s[0], p)


def test_smoothing_damps_a_one_frame_flicker():
    t = FaceTracker(smoothing=0.6)
    labels = []
    for k, p in enumerate([HAPPY] * 5 + [SAD] + [HAPPY] * 3):
        _, s = t.update([[10, 10, 50, 50]], [p], stamp=k / 30)
        assert s[0].sum() == pytest.approx(1.0)
        labels.append(int(np.argmax(s[0])))
    assert labels == [3] * 9  # the single sad frame does not flip the label
    # ... while a lasting change does come through within a few frames
    for k in range(4):
        _, s = t.update([[10, 10, 50, 50]], [SAD], stamp=(10 + k) / 30)
    assert int(np.argmax(s[0])) == 4


def test_each_track_is_smoothed_separately():
    t = FaceTracker(smoothing=0.9)
    t.update([[0, 0, 50, 50], [200, 0, 50, 50]], [HAPPY, SAD], stamp=0)
    _, s = t.update([[0, 0, 50, 50], [200, 0, 50, 50]], [HAPPY, SAD], stamp=0.03)
    np.testing.assert_allclose(s, [HAPPY, SAD])


def test_bad_parameters():
    for kw in ({"smoothing": 1.0}, {"smoothing": -0.1}, {"iou_threshold": 0}, {"max_age_s": -1}):
        with pytest.raises(ValueError):
            FaceTracker(**kw)


# ------------------------------------------------- the pipeline keeps faces through short misses



@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    return ExpressionClassifier(make_onnx_model(tmp_path_factory.mktemp("m") / "rand.onnx"), backend="onnxruntime")


def test_default_pipeline_keeps_the_face_in_view_on_real_videos(clf):
    """Issue 16 targets: a face in >= 97% of the frames where one is present, one id for it,
    and no face in >= 98% of the frames of a face-free video."""
    pipe = ExpressionPipeline(classifier=clf)
    video = frames("single_face.mp4")
    res = [pipe.process(f, i / 30.0) for i, f in enumerate(video)]
    assert np.mean([len(r) == 1 for r in res]) >= 0.97
    assert {f.face_id for r in res for f in r} == {1}

    pipe = ExpressionPipeline(classifier=clf)
    video = frames("noface_face.mov")
    cut = scene_cut(video)
    counts = np.array([len(pipe.process(f, i / 26.5)) for i, f in enumerate(video)])
    assert counts[:cut].sum() == 0 and np.mean(counts[cut:] > 0) >= 0.97

    pipe = ExpressionPipeline(classifier=clf)
    video = frames("no_face.mp4")
    assert sum(bool(pipe.process(f, i / 23.7)) for i, f in enumerate(video)) <= 0.02 * len(video)


def covered(frame, box, grow=0.6):
    """The frame with a flat patch over the face box and around it (a hand, a toy)."""
    out = frame.copy()
    x, y, w, h = box
    x0, y0 = max(0, int(x - grow * w)), max(0, int(y - grow * h))
    out[y0:int(y + h + grow * h), x0:int(x + w + grow * w)] = 120
    return out


def test_a_briefly_covered_face_keeps_its_id_and_box_and_a_lasting_cover_ends_it(clf):
    video = frames("single_face.mp4")[:40]
    pipe = ExpressionPipeline(classifier=clf, hold_frames=6)
    for i in range(10):
        res = pipe.process(video[i], i / 30)
    assert [r.face_id for r in res] == [1]
    box = res[0].box
    # 4 covered frames: without holding the face is lost ...
    bare = ExpressionPipeline(classifier=clf, hold_frames=0)
    for i in range(10):
        bare.process(video[i], i / 30)
    assert any(len(bare.process(covered(video[i], box), i / 30)) == 0 for i in range(10, 14))
    # ... with it, the same id and box go on through the gap, and on after it
    for i in range(10, 14):
        res = pipe.process(covered(video[i], box), i / 30)
        assert [r.face_id for r in res] == [1] and res[0].box == box
    for i in range(14, 20):
        assert [r.face_id for r in pipe.process(video[i], i / 30)] == [1]
    # A cover that lasts: the box is held for hold_frames frames at most, then the face is gone.
    box = pipe.process(video[20], 20 / 30)[0].box
    held = [len(pipe.process(covered(video[i], box), i / 30)) for i in range(21, 40)]
    assert held[:6] == [1] * 6 and sum(held) == 6


def test_a_tilted_face_is_found_again_near_its_box_not_held(clf):
    """Between full scans a 20-degree tilt loses the face at the normal threshold; the looser
    re-detection around its box finds it, so it follows the face instead of holding an old box."""
    img = read("single_face.jpg")
    pipe = ExpressionPipeline(classifier=clf, detect_interval=50, hold_frames=3)
    for i in range(5):
        res = pipe.process(img, i / 30)
    (x, y, w, h) = res[0].box
    shift = np.float32([[1, 0, 0.15 * w], [0, 1, 0]])  # it also moves right by 15% of its size
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((x + w / 2, y + h / 2), 20, 1.0), img.shape[1::-1],
                         borderMode=cv2.BORDER_REPLICATE)
    rot = cv2.warpAffine(rot, shift, img.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
    res = pipe.process(rot, 5 / 30)
    assert [r.face_id for r in res] == [1]
    assert res[0].box[0] > x + 0.05 * w  # a new box where the face now is, not the held one


def test_hold_parameter_is_checked(clf):
    with pytest.raises(ValueError, match="hold_frames"):
        ExpressionPipeline(classifier=clf, hold_frames=-1)


def test_a_held_box_follows_the_covered_face_by_optical_flow(clf):
    """The face is hidden behind a textured cover (a piece of a real face-free frame) while the
    child moves right by 6 px a frame: the held box moves with it, and keeps its id."""
    background = cv2.resize(frames("no_face.mp4")[10], (640, 480), interpolation=cv2.INTER_AREA)
    portrait = cv2.resize(read("single_face.jpg"), (240, 240), interpolation=cv2.INTER_AREA)
    texture = cv2.resize(frames("no_face.mp4")[50], (640, 480), interpolation=cv2.INTER_AREA)[100:340, 200:440]

    def scene(dx, cover_box=None):
        img = background.copy()
        img[120:360, 100 + dx:340 + dx] = portrait
        if cover_box is not None:
            x, y, w, h = cover_box
            x0, y0, x1, y1 = int(x - 0.5 * w) + dx, int(y - 0.5 * h), int(x + 1.5 * w) + dx, int(y + 1.5 * h)
            img[y0:y1, x0:x1] = texture[: y1 - y0, : x1 - x0]
        return img

    for flow in (True, False):
        pipe = ExpressionPipeline(classifier=clf, hold_frames=8)
        for i in range(5):
            res = pipe.process(scene(0), i / 30)
        assert len(res) == 1
        box0 = res[0].box
        xs = []
        for k in range(1, 7):
            img = scene(6 * k, box0)
            if not flow:
                pipe._prev_flow = None  # as if there were no optical flow
            res = pipe.process(img, (4 + k) / 30)
            assert [r.face_id for r in res] == [1]
            xs.append(res[0].box[0] - box0[0])
        if flow:
            assert abs(xs[-1] - 36) <= 6, xs  # followed: 6 frames x 6 px
        else:
            assert xs[-1] == 0  # held in place

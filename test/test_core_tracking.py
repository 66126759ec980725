"""FaceTracker: stable ids, never reused, timeouts in stamps and frames, score smoothing."""

from __future__ import annotations

import numpy as np
import pytest

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

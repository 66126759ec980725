"""ExpressionPipeline end to end on real media: stable ids, results contract, odd frames,
dozens of faces in one batch, timings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import frames, make_onnx_model, read, scene_cut
from fer_ros import LABELS
from fer_ros.perception.classifier import ExpressionClassifier
from fer_ros.perception.pipeline import ExpressionPipeline, FaceResult
from fer_ros.perception.preprocess import FRAMINGS, Framing, crop_faces


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    return ExpressionClassifier(make_onnx_model(tmp_path_factory.mktemp("m") / "rand.onnx"), backend="onnxruntime")


class CountingClassifier:
    """Wraps a classifier and records the batch size of every predict call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.model_path, self.backend = inner.model_path, inner.backend

    def predict(self, faces):
        self.calls.append(len(faces))
        return self.inner.predict(faces)


def check_result(r: FaceResult, shape):
    assert isinstance(r.face_id, int) and r.face_id >= 1
    assert len(r.box) == 4 and all(isinstance(v, int) for v in r.box)
    x, y, w, h = r.box
    assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= shape[1] + 1 and y + h <= shape[0] + 1
    assert r.expression in LABELS and r.scores.shape == (7,)
    assert r.expression == LABELS[int(np.argmax(r.scores))] and r.confidence == pytest.approx(r.scores.max())
    assert r.scores.sum() == pytest.approx(1.0, abs=1e-4)


def test_multi_face_photo_results(clf):
    img = read("multi_face.jpg")
    counting = CountingClassifier(clf)
    pipe = ExpressionPipeline(classifier=counting)
    res = pipe.process(img)
    assert len(res) >= 4
    assert counting.calls == [len(res)]  # all faces of the frame in one batched call
    for r in res:
        check_result(r, img.shape)
    assert len({r.face_id for r in res}) == len(res)
    doc = json.loads(json.dumps([r.to_dict() for r in res]))
    assert set(doc[0]) == {"face_id", "box", "expression", "confidence", "scores", "detection_score"}
    assert list(doc[0]["scores"]) == list(LABELS)
    t = pipe.last_timings
    assert {"detect", "classify", "track", "total"} <= set(t)
    assert t["total"] >= t["detect"] > 0


@pytest.mark.parametrize("detect_interval", [1, 5])
def test_single_face_video_keeps_one_id(clf, detect_interval):
    pipe = ExpressionPipeline(classifier=clf, detect_interval=detect_interval)
    video = frames("single_face.mp4")
    ids, found = set(), 0
    for i, f in enumerate(video):
        res = pipe.process(f, stamp=i / 30.0)
        assert len(res) <= 1
        found += len(res)
        ids |= {r.face_id for r in res}
    assert found >= 0.9 * len(video)
    assert ids == {1}


def test_no_face_and_late_face_videos(clf):
    pipe = ExpressionPipeline(classifier=clf)
    video = frames("no_face.mp4")
    with_faces = sum(bool(pipe.process(f, i / 24)) for i, f in enumerate(video))
    assert with_faces <= 0.05 * len(video)

    pipe = ExpressionPipeline(classifier=clf)
    video = frames("noface_face.mov")
    cut = scene_cut(video)
    counts = [len(pipe.process(f, i / 26.5)) for i, f in enumerate(video)]
    assert sum(counts[:cut]) == 0
    assert np.mean(np.array(counts[cut:]) > 0) >= 0.85
    # and one person is one id from the moment they appear
    ids = {r.face_id for i, f in enumerate(video[cut:cut + 30]) for r in pipe.process(f, (cut + 60 + i) / 26.5)}
    assert len(ids) == 1


def test_tracking_off_gives_raw_scores_and_per_frame_ids(clf):
    img = cv2.resize(read("multi_face.jpg"), (640, 480))
    pipe = ExpressionPipeline(classifier=clf, tracking=False)
    for _ in range(2):
        res = pipe.process(img)
        assert [r.face_id for r in res] == list(range(1, len(res) + 1))
    raw = clf.predict(crop_faces(img, [r.box for r in res], pipe.framing))
    np.testing.assert_allclose(np.stack([r.scores for r in res]), raw, atol=1e-4)


def test_gray_bgra_odd_and_empty_frames(clf):
    pipe = ExpressionPipeline(classifier=clf, tracking=False, detect_interval=1)
    img = read("single_face.jpg")[3:, 1:]  # 559 x 571: odd sizes
    ref = pipe.process(img)
    assert len(ref) == 1
    for variant in (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)):
        res = pipe.process(variant)
        # the same face: MTCNN (the default) sees colour, so a gray copy's box may move a little
        assert len(res) == 1 and np.abs(np.subtract(res[0].box, ref[0].box)).max() <= 0.05 * ref[0].box[3]
    for bad in (None, np.zeros((0, 0, 3), np.uint8), np.zeros((480, 0, 3), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(ValueError, match="empty|malformed"):
            pipe.process(bad)
    with pytest.raises(ValueError, match="uint8"):
        pipe.process(np.zeros((48, 48, 3), np.float32))


def test_dozens_of_faces_in_one_batch(clf):
    face = read("single_face.jpg")
    tile = cv2.resize(face, (160, 160), interpolation=cv2.INTER_AREA)
    mosaic = np.vstack([np.hstack([tile] * 6)] * 6)  # 36 faces, 960 x 960
    counting = CountingClassifier(clf)
    pipe = ExpressionPipeline(classifier=counting, max_faces=None)
    res = pipe.process(mosaic)
    assert len(res) >= 24 and counting.calls == [len(res)]  # most of them, all in one call
    assert len({r.face_id for r in res}) == len(res)
    capped = ExpressionPipeline(classifier=clf, max_faces=10).process(mosaic)
    assert len(capped) == 10


def test_tiny_faces_are_ignored_not_crashed(clf):
    canvas = np.full((480, 640, 3), 120, np.uint8)
    canvas[100:120, 100:120] = cv2.resize(read("single_face.jpg"), (20, 20))
    pipe = ExpressionPipeline(classifier=clf)
    assert pipe.process(canvas) == []
    assert pipe.last_timings["faces"] == 0
    # a 2x2 frame is handled too
    assert pipe.process(np.zeros((2, 2, 3), np.uint8)) == []


def test_bad_parameters(clf):
    for kw in ({"max_faces": 0}, {"min_face_size": 0}, {"framing": Framing(0.0)}, {"detect_interval": 0}):
        with pytest.raises(ValueError):
            ExpressionPipeline(classifier=clf, **kw)
    with pytest.raises(ValueError, match="unknown detector"):
        ExpressionPipeline(detector="nope", classifier=clf)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ExpressionPipeline(model_path="/nonexistent/missing.onnx")


def test_ros_time_stamp_objects(clf):
    class Stamp:  # builtin_interfaces/Time-like
        def __init__(self, t):
            self.sec, self.nanosec = int(t), int((t % 1) * 1e9)

    pipe = ExpressionPipeline(classifier=clf, max_age_s=0.5)
    img = read("single_face.jpg")
    assert pipe.process(img, Stamp(10.0))[0].face_id == 1
    assert pipe.process(img, Stamp(10.3))[0].face_id == 1
    assert pipe.process(img, Stamp(11.5))[0].face_id == 2  # gone longer than max_age_s


class ScriptedDetector:
    """Fixed faces; records which frames got a full scan and which a re-detection."""

    def __init__(self, boxes):
        self.boxes, self.log, self.lose_next = np.asarray(boxes, np.float32), [], False

    def detect(self, frame):
        self.log.append("scan")
        return self.boxes.copy()

    def detect_near(self, frame, boxes):
        self.log.append("near")
        out = np.asarray(boxes, np.float32)
        if self.lose_next:
            self.lose_next = False
            return out[1:]
        return out


def test_full_scans_every_interval_and_after_a_loss_gap_or_resize(clf):
    det = ScriptedDetector([[100, 100, 80, 80, 0.9], [300, 100, 80, 80, 0.9]])
    pipe = ExpressionPipeline(detector=det, classifier=clf, detect_interval=4)
    frame = np.full((480, 640, 3), 100, np.uint8)
    t = 0.0
    for _ in range(9):
        assert len(pipe.process(frame, t)) == 2
        t += 0.033
    assert det.log == ["scan", "near", "near", "near"] * 2 + ["scan"]
    det.log.clear()
    det.lose_next = True
    pipe.process(frame, t)  # a face lost near its last place ...
    pipe.process(frame, t + 0.033)  # ... so the whole frame is scanned next
    assert det.log == ["near", "scan"]
    det.log.clear()
    pipe.process(frame, t + 2.0)  # 2 s gap in the stream
    pipe.process(np.full((240, 320, 3), 100, np.uint8), t + 2.033)  # new frame size
    assert det.log == ["scan", "scan"]
    ids = [r.face_id for r in pipe.process(frame, t + 2.066)]
    assert ids == [3, 4]  # after the 2 s gap (> max_age_s) they count as new tracks


def test_crop_framing_is_the_detectors_measured_one_unless_given(clf):
    assert ExpressionPipeline(classifier=clf).framing == FRAMINGS["mtcnn"]  # default detector: MTCNN
    assert ExpressionPipeline(detector="haar", classifier=clf).framing == FRAMINGS["haar"]
    assert ExpressionPipeline(detector="whole", classifier=clf).framing == FRAMINGS["whole"]
    own = Framing(1.3, 0.0, 0.05)
    assert ExpressionPipeline(classifier=clf, framing=own).framing == own



class SlowCloneableDetector(ScriptedDetector):
    """Full scans take `delay` seconds; clones share the log."""

    def __init__(self, boxes, delay, log=None):
        super().__init__(boxes)
        self.delay = delay
        self.log = self.log if log is None else log

    def clone(self):
        return SlowCloneableDetector(self.boxes, self.delay, self.log)

    def detect(self, frame):
        import time
        time.sleep(self.delay)
        return super().detect(frame)


def test_async_scan_keeps_frames_fast_and_adds_new_faces_later(clf):
    import time

    det = SlowCloneableDetector([[100, 100, 80, 80, 0.9]], delay=0.0)
    pipe = ExpressionPipeline(detector=det, classifier=clf, detect_interval=3, async_scan=True)
    frame = np.full((480, 640, 3), 100, np.uint8)
    assert [r.face_id for r in pipe.process(frame, 0.0)] == [1]  # the first frame scans in line
    pipe._scanner.delay = 0.3  # from now on the background scans are slow ...
    pipe._scanner.boxes = np.array([[100, 100, 80, 80, 0.9], [400, 100, 80, 80, 0.9]], np.float32)  # ... and see a newcomer
    worst, seen_two_at = 0.0, None
    for i in range(1, 30):
        t0 = time.perf_counter()
        res = pipe.process(frame, i * 0.033)
        worst = max(worst, time.perf_counter() - t0)
        if len(res) == 2 and seen_two_at is None:
            seen_two_at = i
        assert 1 in [r.face_id for r in res]  # the known face is followed on every frame
        time.sleep(0.033)
    assert worst < 0.2  # no frame waited for a 0.3 s scan
    assert seen_two_at is not None and seen_two_at >= 3  # the new face joined once its scan was done
    assert sorted(r.face_id for r in pipe.process(frame, 1.0)) == [1, 2]
    pipe.close()


def test_async_scan_on_real_video(clf):
    pipe = ExpressionPipeline(classifier=clf, async_scan=True)
    assert pipe.async_scan
    video = frames("single_face.mp4")
    counts, ids = [], set()
    for i, f in enumerate(video):
        res = pipe.process(f, i / 30)
        counts.append(len(res))
        ids |= {r.face_id for r in res}
    pipe.close()
    assert ids == {1} and max(counts) == 1 and np.mean(counts) >= 0.9


def test_framings_are_the_measured_ones():
    """fer_ros.perception.preprocess.FRAMINGS holds what `python -m training.calibrate` measured and adopted."""
    rec = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "crop_calibration.json").read_text())
    for name, d in rec["detectors"].items():
        f = FRAMINGS[name]
        assert (f.scale, f.dx, f.dy) == pytest.approx((d["adopted"]["scale"], d["adopted"]["dx"], d["adopted"]["dy"]))

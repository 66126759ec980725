"""Evaluation metrics on a hand-made case whose numbers are worked out by hand below."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_ros import LABELS
from fer_ros.bags.io import BagWriter
from fer_ros.bags import messages as bags
from fer_ros.bags import evaluation
from fer_ros.bags.evaluation import Output

MS = 1_000_000


def _case():
    # frame stamps 0..5 (x 100 ms); labels on frames 0-4, frame 5 unlabelled
    gt = {0: "happy", 100 * MS: "happy", 200 * MS: "sad", 300 * MS: "sad", 400 * MS: "angry"}
    outputs = [
        Output(0, 10 * MS, ["happy"], [100]),                        # right
        Output(100 * MS, 120 * MS, ["sad", "happy"], [50, 400]),     # two faces: the larger (happy) is right
        Output(200 * MS, 240 * MS, ["happy"], [100]),                # wrong: sad -> happy
        # frame 300 ms: dropped by the node, no output
        Output(400 * MS, 430 * MS, [], []),                          # processed, no face: a detection miss
        Output(500 * MS, 550 * MS, ["fear"], [80]),                  # unlabelled frame: runtime only
        Output(500 * MS, 999 * MS, ["fear"], [80]),                  # duplicate of a frame: ignored
    ]
    return gt, outputs


def test_metrics_by_hand():
    gt, outputs = _case()
    r = evaluation.evaluate(gt, outputs, frames_in=6)
    assert r["labelled_frames"] == 5
    assert r["labelled_processed"] == 4  # 300 ms was dropped
    assert r["labelled_detected"] == 3  # 400 ms had no face
    assert r["detection_rate"] == pytest.approx(3 / 4)
    assert r["correct"] == 2
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["accuracy_all_labelled"] == pytest.approx(2 / 5)
    cm = np.array(r["confusion_matrix"])
    assert cm.sum() == 3
    assert cm[LABELS.index("happy"), LABELS.index("happy")] == 2
    assert cm[LABELS.index("sad"), LABELS.index("happy")] == 1
    happy, sad = r["per_class"]["happy"], r["per_class"]["sad"]
    assert (happy["precision"], happy["recall"], happy["support"]) == (pytest.approx(2 / 3), 1.0, 2)
    assert happy["f1"] == pytest.approx(0.8)
    assert (sad["precision"], sad["recall"], sad["f1"], sad["support"]) == (0.0, 0.0, 0.0, 1)
    assert r["macro_f1"] == pytest.approx(0.4)  # classes with support: happy 0.8, sad 0.0
    # runtime: 5 distinct outputs of 6 frames; latencies 10, 20, 40, 30, 50 ms
    assert r["frames_in"] == 6 and r["frames_out"] == 5
    assert r["processed_fraction"] == pytest.approx(5 / 6)
    assert r["latency_ms"]["p50"] == pytest.approx(30.0)
    assert r["latency_ms"]["max"] == pytest.approx(50.0)
    assert r["latency_ms"]["p95"] == pytest.approx(float(np.percentile([10, 20, 40, 30, 50], 95)))
    assert r["processed_fps"] == pytest.approx(5 / 0.55)  # first stamp 0 .. last receipt 550 ms
    assert r["frames_with_face"] == pytest.approx(4 / 5)


def test_evaluate_bag_and_report_files(tmp_path):
    """The same case written as a bag (the replay's layout) gives the same numbers and a report."""
    gt, outputs = _case()
    ts = bags.typestore()
    Face = ts.types["fer_ros/msg/FaceExpression"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    t0 = 1_600_000_000_000_000_000
    with BagWriter(tmp_path / "bag", storage="sqlite3") as bag:
        for topic, ty in ((bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE), (bags.GROUND_TRUTH_TOPIC, bags.STRING_TYPE),
                          (bags.FRAMES_TOPIC, bags.HEADER_TYPE)):
            bag.add_topic(topic, ty)
        for i in range(6):
            bag.write(bags.FRAMES_TOPIC, t0 + i * 100 * MS, bags.make_header(t0 + i * 100 * MS))
        for stamp, label in gt.items():
            bag.write(bags.GROUND_TRUTH_TOPIC, t0 + stamp, bags.make_string(label))
        for o in outputs:
            faces = [Face(face_id=k + 1, box=Roi(x_offset=0, y_offset=0, height=a // 10, width=10, do_rectify=False),
                          expression=e, confidence=0.9, scores=np.full(7, 1 / 7, np.float32), detection_score=1.0)
                     for k, (e, a) in enumerate(zip(o.expressions, o.areas))]
            msg = ts.types[bags.EXPRESSIONS_TYPE](header=bags.make_header(t0 + o.stamp), image_width=64,
                                                  image_height=48, faces=faces)
            bag.write(bags.EXPRESSIONS_TOPIC, t0 + o.receipt, msg)
    r = evaluation.evaluate_bag(tmp_path / "bag")
    direct = evaluation.evaluate(gt, outputs, frames_in=6)
    for key in ("accuracy", "accuracy_all_labelled", "detection_rate", "confusion_matrix", "macro_f1",
                "frames_in", "frames_out", "per_class"):
        assert r[key] == pytest.approx(direct[key]) if isinstance(direct[key], float) else r[key] == direct[key]
    assert r["latency_ms"]["p50"] == pytest.approx(30.0)
    paths = evaluation.write_report(r, tmp_path / "rep")
    saved = json.loads(open(paths["json"]).read())
    assert saved["accuracy"] == pytest.approx(2 / 3)
    md = open(paths["markdown"]).read()
    assert "66.67 %" in md and "| happy | 0.667 | 1.000 | 0.800 | 2 |" in md and "75.00 %" in md
    import cv2

    png = cv2.imread(paths["png"])
    assert png is not None and png.shape[0] > 300


def test_missing_ground_truth_and_outputs(tmp_path):
    with BagWriter(tmp_path / "only_out") as bag:
        bag.add_topic(bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE)
    with pytest.raises(bags.BagError, match="no /ground_truth/expression topic.*fer-ros bag label"):
        evaluation.evaluate_bag(tmp_path / "only_out")
    with BagWriter(tmp_path / "empty_gt") as bag:
        bag.add_topic(bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE)
        bag.add_topic(bags.GROUND_TRUTH_TOPIC, bags.STRING_TYPE)
    with pytest.raises(bags.BagError, match="has no labels"):
        evaluation.evaluate_bag(tmp_path / "empty_gt")
    runtime = evaluation.evaluate_bag_outputs(tmp_path / "only_out")
    assert runtime["frames_out"] == 0 and runtime["latency_ms"]["p50"] is None
    with BagWriter(tmp_path / "bad_label") as bag:
        bag.add_topic(bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE)
        bag.add_topic(bags.GROUND_TRUTH_TOPIC, bags.STRING_TYPE)
        bag.write(bags.GROUND_TRUTH_TOPIC, 5, bags.make_string("joyful"))
    with pytest.raises(bags.BagError, match="unknown expression label 'joyful'"):
        evaluation.evaluate_bag(tmp_path / "bad_label")

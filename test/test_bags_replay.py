"""Video -> bag -> replay through the expression node -> evaluate, on the real media.

- fast (in-process) replay of single_face.mp4 with CSV labels: every frame processed, the
  face found, and the evaluation equals a direct computation with the same pipeline;
- real publish/subscribe replay: outputs carry the published stamps, labels follow them,
  latencies are positive;
- FER-2013 PublicTest (all 3589 images) as a bag through the node ("whole" detector) scores
  the same as the classifier called directly;
- the `fer-ros bag` command line end to end, report files included.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")
pytest.importorskip("fer_ros.msg", reason="fer_ros messages not built (run `make build`)")

from fer_ros import LABELS  # noqa: E402
from fer_ros.bags import evaluation  # noqa: E402
from fer_ros.bags.io import BagWriter, read_bag  # noqa: E402
from fer_ros.bags import make  # noqa: E402
from fer_ros.bags import messages as bags  # noqa: E402
from fer_ros.bags import replay as bag_replay  # noqa: E402
from fer_ros.ros.image import image_msg_to_array  # noqa: E402
from fer_ros.ros.dds import large_data_env  # noqa: E402

from conftest import REPO, make_onnx_model, need_shared  # noqa: E402

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))  # keep parallel runs apart
large_data_env()
T0 = 1_750_000_000_000_000_000
CSV = "start_s,end_s,label\n0.0,1.0,happy\n1.0,1.8,neutral\n70,surprise\n"  # frames 54-69, 71 unlabelled


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str | None:
    """None (= the node's and the classifier's default, exactly what users get) when the package
    ships its model; else a small deterministic ONNX with the same interface ([N,1,48,48] ->
    logits [N,7]) whose predictions differ from image to image."""
    from fer_ros.perception.models import default_model_path

    if default_model_path().is_file():
        return None
    return str(make_onnx_model(tmp_path_factory.mktemp("model") / "tiny_fer.onnx", seed=6))


def _node_params(model, **extra):
    return {**({"model_path": model} if model else {}), "backend": "onnxruntime", **extra}


def _direct(video: Path, labels: make.LabelTrack, params: dict, stamps_s):
    """The same pipeline called directly on the decoded frames: {frame: (label, predicted or None)}.

    `stamps_s` are the stamps the replay gave the frames: the pipeline's choices (full scan
    after a gap, track expiry) depend on them, so the same stamps give the same results."""
    from fer_ros.ros.expression_node import PARAMS, build_pipeline

    p = {q.name: q.default for q in PARAMS}
    p.update(params)
    pipeline = build_pipeline(p)
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    out, i = {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        results = pipeline.process(frame, stamp=stamps_s[i])
        subject = max(results, key=lambda r: r.box[2] * r.box[3]).expression if results else None
        out[i] = (labels.label(i, i / fps), subject)
        i += 1
    return out


@pytest.fixture(scope="module")
def video_bag(tmp_path_factory):
    media = need_shared("media")
    tmp = tmp_path_factory.mktemp("video")
    (tmp / "labels.csv").write_text(CSV)
    make.video_to_bag(media / "single_face.mp4", tmp / "in", labels=tmp / "labels.csv", start_ns=T0)
    return media / "single_face.mp4", tmp / "in", make.read_labels(tmp / "labels.csv")


def test_fast_replay_matches_direct_pipeline(video_bag, model, tmp_path):
    video, bag, labels = video_bag
    params = _node_params(model)
    summary = bag_replay.replay(bag, tmp_path / "out", rate=None, params=params, log=lambda *_: None)
    assert summary["frames_in"] == summary["outputs"] == 72
    result = evaluation.evaluate_bag(tmp_path / "out")

    msgs = read_bag(tmp_path / "out", [bags.EXPRESSIONS_TOPIC, bags.FRAMES_TOPIC])
    frame_stamps = [bags.stamp_to_ns(m.msg.stamp) for m in msgs if m.topic == bags.FRAMES_TOPIC]
    direct = _direct(video, labels, params, [t / 1e9 for t in frame_stamps])
    scored = [(t, p) for t, p in direct.values() if t is not None]
    assert len(scored) == 55  # frames 0-53 and 70 by the CSV
    found = [(t, p) for t, p in scored if p is not None]
    correct = sum(t == p for t, p in found)
    assert result["labelled_frames"] == result["labelled_processed"] == 55
    assert result["labelled_detected"] == len(found)
    assert result["detection_rate"] == pytest.approx(len(found) / 55)
    assert result["detection_rate"] >= 0.9  # one clearly visible face throughout
    assert result["correct"] == correct
    assert result["accuracy"] == pytest.approx(correct / len(found))
    cm = np.zeros((7, 7), int)
    for t, p in found:
        cm[LABELS.index(t), LABELS.index(p)] += 1
    assert result["confusion_matrix"] == cm.tolist()
    for k, label in enumerate(LABELS):
        tp, fp, fn = cm[k, k], cm[:, k].sum() - cm[k, k], cm[k, :].sum() - cm[k, k]
        assert result["per_class"][label]["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert result["per_class"][label]["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 0.0)
    assert result["frames_in"] == result["frames_out"] == 72
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] < 5000

    # frame by frame: the replayed output of frame i is the direct pipeline's prediction
    outputs = {bags.stamp_to_ns(m.msg.header.stamp): m.msg for m in msgs if m.topic == bags.EXPRESSIONS_TOPIC}
    assert len(frame_stamps) == 72 and set(outputs) == set(frame_stamps)
    for i, stamp in enumerate(frame_stamps):
        faces = outputs[stamp].faces
        got = max(faces, key=lambda f: f.box.width * f.box.height).expression if len(faces) else None
        assert got == direct[i][1], i
        assert (outputs[stamp].image_width, outputs[stamp].image_height) == (640, 360)


def test_realtime_replay_pub_sub(video_bag, model, tmp_path):
    """Recorded speed x1.5 over real topics: stamps, labels and latency line up."""
    _, bag, _ = video_bag
    summary = bag_replay.replay(bag, tmp_path / "out", rate=1.5, params=_node_params(model), log=lambda *_: None,
                             max_frames=40, keep_images=True)
    assert summary["frames_in"] == 40
    assert summary["outputs"] >= 5  # the node keeps only the newest frame: a busy CPU drops some
    msgs = read_bag(tmp_path / "out")
    published = {bags.stamp_to_ns(m.msg.stamp) for m in msgs if m.topic == bags.FRAMES_TOPIC}
    images = {bags.stamp_to_ns(m.msg.header.stamp) for m in msgs if m.topic == bags.IMAGE_TOPIC}
    gts = {m.log_time: m.msg.data for m in msgs if m.topic == bags.GROUND_TRUTH_TOPIC}
    outs = [m for m in msgs if m.topic == bags.EXPRESSIONS_TOPIC]
    assert len(published) == 40 and images == published
    assert set(gts) == published  # frames 0-29 (0-1 s) happy, 30-39 neutral, moved to the new stamps
    assert [gts[t] for t in sorted(gts)] == ["happy"] * 30 + ["neutral"] * 10
    for m in outs:
        stamp = bags.stamp_to_ns(m.msg.header.stamp)
        assert stamp in published
        assert 0 < m.log_time - stamp < 5e9
    # the x1.5 schedule: frame i is due i/30 s / 1.5 after the first and is never published early;
    # any delay beyond the schedule is reported (a busy machine may lag, but not silently)
    ordered = sorted(published)
    for i, t in enumerate(ordered):
        assert (t - ordered[0]) / 1e9 > i / 30 / 1.5 - 0.005, i
    assert (ordered[-1] - ordered[0]) / 1e9 < 39 / 30 / 1.5 + summary["max_lag_s"] + 0.01
    assert summary["late_frames"] == 0 or summary["max_lag_s"] > bag_replay.LATE_S
    result = evaluation.evaluate_bag(tmp_path / "out")
    assert result["frames_in"] == 40 and result["frames_out"] == len(outs)
    assert result["latency_ms"]["p50"] > 0


def _fer_agreement(model, tmp_path, limit):
    shared = need_shared()
    npz = shared / "data" / "fer2013.npz"
    if not npz.exists():
        pytest.skip(f"{npz} missing")
    from fer_ros.perception.classifier import ExpressionClassifier

    images, labels = make.load_fer2013(npz, "PublicTest")
    images, labels = images[:limit], labels[:limit]
    direct = ExpressionClassifier(model, backend="onnxruntime").predict(images).argmax(axis=1)
    direct_acc = float(np.mean(direct == labels))

    make.dataset_to_bag(npz, tmp_path / "fer", limit=limit, start_ns=T0)
    # the bag's recommended settings (whole-image detector, no smoothing) are applied by replay
    bag_replay.replay(tmp_path / "fer", tmp_path / "out", rate=None, params=_node_params(model), log=lambda *_: None)
    result = evaluation.evaluate_bag(tmp_path / "out")
    assert result["labelled_frames"] == result["labelled_detected"] == limit
    assert result["detection_rate"] == 1.0
    assert abs(result["accuracy"] - direct_acc) <= 0.001  # within 0.1 percentage point
    # and image by image, in bag order
    msgs = read_bag(tmp_path / "out", [bags.EXPRESSIONS_TOPIC])
    replayed = np.array([LABELS.index(m.msg.faces[0].expression) for m in msgs])
    assert np.mean(replayed == direct) >= 0.999
    assert len(set(replayed.tolist())) > 1  # a model that says the same thing for every face proves nothing
    return result, direct_acc


def test_fer2013_publictest_bag_agrees_with_classifier(model, tmp_path):
    """All 3589 PublicTest images (about 15 s: the whole-image detector is cheap)."""
    result, direct_acc = _fer_agreement(model, tmp_path, 3589)
    print(f"FER-2013 PublicTest: bag replay {100 * result['accuracy']:.2f} %, direct {100 * direct_acc:.2f} %")


def test_cli_round_trip_with_report(model, tmp_path, media):
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "fer_ros.cli", "bag", *map(str, args)], capture_output=True,
                              text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    (tmp_path / "l.csv").write_text("frame,label\n" + "".join(f"{i},sad\n" for i in range(0, 72, 3)))
    out = cli("from-video", media / "single_face.mp4", "--labels", "l.csv", "--storage", "sqlite3",
              "--max-frames", "36")
    assert "36 frames" in out and "12 labelled" in out
    out = cli("replay", "single_face_bag", "--fast", *(["-p", f"model_path:={model}"] if model else []),
              "-p", "backend:=onnxruntime")
    assert "36 outputs for 36 frames" in out
    assert (tmp_path / "single_face_bag_replay" / "metadata.yaml").exists()
    assert next((tmp_path / "single_face_bag_replay").glob("*.db3"))  # storage follows the input
    out = cli("evaluate", "single_face_bag_replay", "--report", "rep")
    report = json.loads((tmp_path / "rep" / "evaluation.json").read_text())
    direct = evaluation.evaluate_bag(tmp_path / "single_face_bag_replay")
    for key in ("accuracy", "detection_rate", "labelled_frames", "correct", "confusion_matrix", "frames_in"):
        assert report[key] == direct[key], key
    assert report["labelled_frames"] == 12
    assert f"{100 * direct['accuracy']:.2f} %" in out
    assert (tmp_path / "rep" / "confusion_matrix.png").stat().st_size > 5000
    assert "| sad |" in (tmp_path / "rep" / "evaluation.md").read_text()
    out = cli("evaluate", "single_face_bag_replay", "--no-labels", "--report", "rep2", "--json")
    assert json.loads(out)["frames_out"] == 36
    out = cli("info", "single_face_bag_replay")
    assert "sqlite3, 84 messages" in out  # 36 outputs + 36 frame markers + 12 labels
    assert "/faces/expressions [fer_ros/msg/FaceExpressionArray] 36 msgs" in out
    assert "replay_of: single_face_bag" in out and "replay_mode: fast" in out


def test_compressed_image_bag_replays(model, tmp_path, media):
    """Robots record image_transport's CompressedImage; replay decodes it for the node."""
    ts = bags.typestore()
    Compressed = ts.types[bags.COMPRESSED_TYPE]
    cap = cv2.VideoCapture(str(media / "single_face.mp4"))
    with BagWriter(tmp_path / "rec") as bag:
        bag.add_topic("/camera/image_raw/compressed", bags.COMPRESSED_TYPE, qos="sensor_data")
        for i in range(20):
            ok, frame = cap.read()
            assert ok
            t = T0 + i * 33_333_333
            data = np.frombuffer(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], np.uint8)
            bag.write("/camera/image_raw/compressed", t + 2_000_000,
                      Compressed(header=bags.make_header(t), format="bgr8; jpeg compressed bgr8", data=data))
    (tmp_path / "l.csv").write_text("0,10,happy\n")
    make.label_bag(tmp_path / "rec", tmp_path / "lab", tmp_path / "l.csv", topic="/camera/image_raw/compressed")
    summary = bag_replay.replay(tmp_path / "lab", tmp_path / "out", rate=None, params=_node_params(model),
                             image_topic="/camera/image_raw/compressed", log=lambda *_: None, annotated=True,
                             keep_images=True)
    assert summary["outputs"] == 20 and summary["labelled"] == 20
    # annotated frames: the input with the face box drawn in the expression's colour
    msgs = read_bag(tmp_path / "out", [bags.ANNOTATED_TOPIC, bags.IMAGE_TOPIC, bags.EXPRESSIONS_TOPIC])
    drawn = [m.msg for m in msgs if m.topic == bags.ANNOTATED_TOPIC]
    inputs = {bags.stamp_to_ns(m.msg.header.stamp): m.msg for m in msgs if m.topic == bags.IMAGE_TOPIC}  # decoded
    exprs = {bags.stamp_to_ns(m.msg.header.stamp): m.msg for m in msgs if m.topic == bags.EXPRESSIONS_TOPIC}
    assert len(drawn) == 20
    for d in drawn[:3]:
        stamp = bags.stamp_to_ns(d.header.stamp)
        a, b = image_msg_to_array(d), image_msg_to_array(inputs[stamp])
        box = exprs[stamp].faces[0].box
        assert a.shape == b.shape == (360, 640, 3)
        changed = np.any(a != b, axis=2)
        assert changed[box.y_offset:box.y_offset + box.height, box.x_offset].mean() > 0.9  # left box edge
        assert changed.mean() < 0.2
    result = evaluation.evaluate_bag(tmp_path / "out")
    assert result["labelled_frames"] == 20 and result["detection_rate"] >= 0.9
    out = read_bag(tmp_path / "out", [bags.EXPRESSIONS_TOPIC])
    assert all((m.msg.image_width, m.msg.image_height) == (640, 360) for m in out)


def test_unstamped_camera_and_broken_frame(model, tmp_path, media):
    """A driver that leaves header.stamp at 0: labels key on log time; a corrupt message is skipped."""
    cap = cv2.VideoCapture(str(media / "single_face.mp4"))
    with BagWriter(tmp_path / "rec", storage="sqlite3") as bag:
        bag.add_topic(bags.IMAGE_TOPIC, bags.IMAGE_TYPE)
        for i in range(12):
            ok, frame = cap.read()
            t = T0 + i * 33_333_333
            if i == 5:
                bag.write(bags.IMAGE_TOPIC, t, b"\x00\x01\x00\x00\x05")  # truncated CDR
            else:
                bag.write(bags.IMAGE_TOPIC, t, bags.make_image(frame, 0))
    (tmp_path / "l.csv").write_text("frame,label\n" + "".join(f"{i},fear\n" for i in range(12)))
    labelled = make.label_bag(tmp_path / "rec", tmp_path / "lab2", tmp_path / "l.csv")
    assert (labelled["frames"], labelled["labelled"], labelled["skipped"]) == (12, 11, 1)
    gts = {m.log_time for m in read_bag(tmp_path / "lab2", [bags.GROUND_TRUTH_TOPIC])}
    assert gts == {T0 + i * 33_333_333 for i in range(12) if i != 5}  # at the images' log times
    logs = []
    summary = bag_replay.replay(tmp_path / "lab2", tmp_path / "out", rate=None, params=_node_params(model),
                             log=logs.append)
    assert summary["outputs"] == 11 and summary["skipped"] == 1 and summary["labelled"] == 11
    assert any("skipping an undecodable image" in line for line in logs)
    result = evaluation.evaluate_bag(tmp_path / "out")
    assert result["labelled_frames"] == result["labelled_processed"] == 11


def test_replay_parameters_from_file_and_command_line(tmp_path):
    """A ROS 2 params YAML (`/**` then the node's own section, nested keys joined by '.') and
    `name:=value` overrides; names, types and ranges are checked against the node's declarations
    before any output exists."""
    (tmp_path / "p.yaml").write_text(
        "/**:\n  ros__parameters:\n    smoothing: 0.2\n    max_faces: 5\n"
        "expression_node:\n  ros__parameters:\n    detector: whole\n    tracking:\n      iou_threshold: 0.4\n"
        "camera_node:\n  ros__parameters:\n    source: demo\n")
    params = bag_replay.parse_params(["max_faces:=3", "flip_average:=true"], tmp_path / "p.yaml")
    assert params == {"smoothing": 0.2, "max_faces": 3, "detector": "whole", "tracking.iou_threshold": 0.4,
                      "flip_average": True}
    assert bag_replay.coerce_params({"smoothing": 0}) == {"smoothing": 0.0}
    assert isinstance(bag_replay.coerce_params({"smoothing": 0})["smoothing"], float)
    with pytest.raises(bags.BagError, match="no parameter 'iou_threshold'.*tracking.iou_threshold"):
        bag_replay.coerce_params({"iou_threshold": 0.5})
    with pytest.raises(bags.BagError, match=r"max_faces must be in \["):
        bag_replay.coerce_params({"max_faces": -1})
    with pytest.raises(bags.BagError, match="must look like name:=value"):
        bag_replay.parse_params(["max_faces=3"])
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(bags.BagError, match="cannot read parameters file"):
        bag_replay.parse_params([], tmp_path / "bad.yaml")


def test_fast_replay_with_an_unusable_setting_leaves_no_output(video_bag, tmp_path):
    _, bag, _ = video_bag
    with pytest.raises(bags.BagError, match="cannot start the expression pipeline.*yunet"):
        bag_replay.replay(bag, tmp_path / "out", rate=None, params={"detector": "yunet"}, log=lambda *_: None)
    assert not (tmp_path / "out").exists()

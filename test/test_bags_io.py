"""Bag writing/reading: identical messages back (mcap and sqlite3), definitions that match the
built interfaces, labels aligned with image stamps, clear errors for bad bags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_ros import LABELS
from fer_ros.bags.io import BagReader, BagWriter, read_bag
from fer_ros.bags import make
from fer_ros.bags import messages as bags
from fer_ros.ros.image import image_msg_to_array

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_123_456_789


def _expressions(ts, stamp, n_faces, rng):
    Face = ts.types["fer_ros/msg/FaceExpression"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    faces = []
    for i in range(n_faces):
        scores = rng.dirichlet(np.ones(7)).astype(np.float32)
        k = int(scores.argmax())
        faces.append(Face(face_id=i + 1, box=Roi(x_offset=10 * i, y_offset=5, height=40 + i, width=41 + i,
                                                  do_rectify=False),
                          expression=LABELS[k], confidence=float(scores[k]), scores=scores,
                          detection_score=0.9))
    return ts.types[bags.EXPRESSIONS_TYPE](header=bags.make_header(stamp, "cam_optical"), image_width=640,
                                           image_height=480, faces=faces)


def _sample_messages():
    """A few of every kind of message the bag tools write, with non-trivial content."""
    ts = bags.typestore()
    rng = np.random.default_rng(0)
    msgs = []
    for i in range(3):
        t = T0 + i * 33_333_333
        msgs.append((bags.IMAGE_TOPIC, bags.IMAGE_TYPE, t,
                     bags.make_image(rng.integers(0, 256, (48, 64, 3), np.uint8), t)))
        msgs.append((bags.GROUND_TRUTH_TOPIC, bags.STRING_TYPE, t, bags.make_string(LABELS[i])))
        msgs.append((bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE, t + 5_000_000, _expressions(ts, t, i, rng)))
    msgs.append(("/gray", bags.IMAGE_TYPE, T0, bags.make_image(rng.integers(0, 256, (7, 5), np.uint8), T0)))
    return msgs


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("storage", bags.STORAGES)
def test_round_trip_identical_messages(tmp_path, storage, background):
    ts = bags.typestore()
    msgs = _sample_messages()
    with BagWriter(tmp_path / "bag", storage=storage, background=background) as bag:
        for topic, msgtype, t, msg in msgs:
            bag.add_topic(topic, msgtype)
            bag.write(topic, t, msg)
    with BagReader(tmp_path / "bag") as bag:
        assert bag.storage == storage
        assert bag.topics == {topic: msgtype for topic, msgtype, _, _ in msgs}
        back = list(bag.messages())
    assert len(back) == len(msgs)
    expected = sorted(msgs, key=lambda m: m[2])  # the reader yields in log-time order
    for (topic, msgtype, t, msg), got in zip(expected, back):
        assert (got.topic, got.msgtype, got.log_time) == (topic, msgtype, t)
        assert bytes(ts.serialize_cdr(got.msg, msgtype)) == bytes(ts.serialize_cdr(msg, msgtype))
    # spot-check decoded values, not only bytes
    img_in, img_out = msgs[0][3], back[0].msg
    assert np.array_equal(image_msg_to_array(img_out), image_msg_to_array(img_in))
    assert bags.stamp_to_ns(img_out.header.stamp) == T0
    expr_in = msgs[8][3]
    expr_out = next(m.msg for m in back if m.topic == bags.EXPRESSIONS_TOPIC and len(m.msg.faces) == 2)
    assert [f.expression for f in expr_out.faces] == [f.expression for f in expr_in.faces]
    assert np.array_equal(expr_out.faces[1].scores, expr_in.faces[1].scores)
    assert expr_out.faces[1].box.width == 42


def test_bag_bytes_decode_with_the_built_ros_messages(tmp_path):
    """What the bag stores is what rclpy/`ros2 bag play` publishes: the generated classes decode it."""
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message

    from fer_ros.msg import FaceExpressionArray

    ts = bags.typestore()
    rng = np.random.default_rng(1)
    msg = _expressions(ts, T0, 3, rng)
    with BagWriter(tmp_path / "bag") as bag:
        bag.add_topic(bags.EXPRESSIONS_TOPIC, bags.EXPRESSIONS_TYPE)
        bag.write(bags.EXPRESSIONS_TOPIC, T0, msg)
    raw = read_bag(tmp_path / "bag", raw=True)[0].msg
    ros = deserialize_message(raw, FaceExpressionArray)
    assert ros.header.stamp.sec * 10**9 + ros.header.stamp.nanosec == T0
    assert ros.header.frame_id == "cam_optical"
    assert [f.face_id for f in ros.faces] == [1, 2, 3]
    assert [f.expression for f in ros.faces] == [f.expression for f in msg.faces]
    assert np.allclose(ros.faces[2].scores, msg.faces[2].scores)
    assert ros.faces[2].box.width == 43 and ros.faces[2].box.x_offset == 20


def test_embedded_type_hashes_match_the_built_interfaces(tmp_path):
    """metadata.yaml carries the RIHS01 hash rosidl computed for our msgs (ros2 bag play checks types)."""
    import yaml

    share = Path(sys.prefix) / "share" / "fer_ros" / "msg"
    ts = bags.typestore()
    for name in ("FaceExpression", "FaceExpressionArray", "TherapyState"):
        built = share / f"{name}.json"
        if not built.exists():
            pytest.skip(f"fer_ros interfaces not built into {sys.prefix} (run `make build`)")
        if (share / f"{name}.msg").read_text() != (bags.msg_dir() / f"{name}.msg").read_text():
            pytest.skip(f"installed {name}.msg is older than msg/{name}.msg (run `make build`)")
        want = json.loads(built.read_text())["type_hashes"][0]["hash_string"]
        assert ts.hash_rihs01(f"fer_ros/msg/{name}") == want
    with BagWriter(tmp_path / "bag", storage="sqlite3") as bag:
        bag.add_topic("/therapy/state", "fer_ros/msg/TherapyState")
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9
    topic = meta["topics_with_message_count"][0]["topic_metadata"]
    assert topic["type_description_hash"] == ts.hash_rihs01("fer_ros/msg/TherapyState")


def test_label_csv_ranges_and_frames(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("start_s,end_s,label  # header\n# comment, with commas\n0.0,1.0,happy\n"
                   "1.0,2.5,5   # index 5: surprise, by number\n\n40,sad\n")
    track = make.read_labels(csv)
    assert track.label(0, 0.0) == "happy"
    assert track.label(29, 0.999) == "happy"
    assert track.label(30, 1.0) == "surprise"
    assert track.label(74, 2.49) == "surprise"
    assert track.label(75, 2.5) is None
    assert track.label(40, 1.333) == "sad"  # a frame row wins over a range
    bad = tmp_path / "bad.csv"
    bad.write_text("0,1,joy\n")
    with pytest.raises(bags.BagError, match="unknown expression label 'joy'"):
        make.read_labels(bad)
    bad.write_text("0,1\n2,1,happy,x\n")
    with pytest.raises(bags.BagError, match="unknown expression label|columns"):
        make.read_labels(bad)


def test_video_labels_aligned_with_frame_stamps(tmp_path, media):
    """Each label sits at exactly its image's header stamp; ranges follow the frame times."""
    csv = tmp_path / "labels.csv"
    csv.write_text("0.0,0.5,neutral\n0.5,1.0,happy\n60,surprise\n")
    out = tmp_path / "bag"
    summary = make.video_to_bag(media / "single_face.mp4", out, labels=csv, fps=20.0, max_frames=64,
                                start_ns=T0)
    assert summary["frames"] == 64
    msgs = read_bag(out)
    images = [m for m in msgs if m.topic == bags.IMAGE_TOPIC]
    labels = {m.log_time: m.msg.data for m in msgs if m.topic == bags.GROUND_TRUTH_TOPIC}
    assert len(images) == 64
    stamps = [bags.stamp_to_ns(m.msg.header.stamp) for m in images]
    assert stamps == [m.log_time for m in images]
    assert stamps == [T0 + round(i * 1e9 / 20) for i in range(64)]
    # at 20 fps: frames 0-9 neutral, 10-19 happy, 60 surprise, the rest unlabelled
    expected = {stamps[i]: "neutral" for i in range(10)}
    expected.update({stamps[i]: "happy" for i in range(10, 20)})
    expected[stamps[60]] = "surprise"
    assert labels == expected
    assert summary["labelled"] == 21
    assert image_msg_to_array(images[0].msg).shape == (360, 640, 3)


def test_letterbox_to_640x480_and_loops(tmp_path, media):
    out = tmp_path / "bag"
    summary = make.video_to_bag(media / "single_face.mp4", out, size=(640, 480), loops=2, start_ns=T0,
                                storage="sqlite3")
    assert summary["frames"] == 144  # 72 frames twice
    msgs = read_bag(out)
    frame = image_msg_to_array(msgs[0].msg)
    assert frame.shape == (480, 640, 3)
    assert frame[:60].max() == 0 and frame[-60:].max() == 0  # black bars above and below
    assert frame[60:420].std() > 10
    stamps = [m.log_time for m in msgs]
    assert stamps == sorted(stamps) and len(set(stamps)) == 144


def test_dataset_bag_images_and_labels(tmp_path, shared):
    npz = shared / "data" / "fer2013.npz"
    if not npz.exists():
        pytest.skip(f"{npz} missing")
    images, labels = make.load_fer2013(npz, "PublicTest")
    assert images.shape == (3589, 48, 48)
    out = tmp_path / "bag"
    make.dataset_to_bag(npz, out, limit=50, fps=100.0, encoding="bgr8", start_ns=T0)
    msgs = read_bag(out)
    imgs = [m for m in msgs if m.topic == bags.IMAGE_TOPIC]
    gts = {m.log_time: m.msg.data for m in msgs if m.topic == bags.GROUND_TRUTH_TOPIC}
    assert len(imgs) == len(gts) == 50
    for i, m in enumerate(imgs):
        assert m.msg.encoding == "bgr8"
        assert np.array_equal(image_msg_to_array(m.msg)[:, :, 1], images[i])
        assert gts[bags.stamp_to_ns(m.msg.header.stamp)] == LABELS[labels[i]]
    with pytest.raises(bags.BagError, match="no split 'Nope'"):
        make.dataset_to_bag(npz, tmp_path / "x", split="Nope")


def test_label_recorded_bag(tmp_path):
    """`bag label` adds ground truth to a recorded bag, aligned to the image header stamps."""
    src = tmp_path / "rec"
    rng = np.random.default_rng(2)
    with BagWriter(src) as bag:
        bag.add_topic(bags.IMAGE_TOPIC, bags.IMAGE_TYPE, qos="sensor_data")
        for i in range(10):
            stamp = T0 + i * 100_000_000
            bag.write(bags.IMAGE_TOPIC, stamp + 7_000_000, bags.make_image(rng.integers(0, 256, (8, 8, 3), np.uint8),
                                                                           stamp))
    csv = tmp_path / "l.csv"
    csv.write_text("0.25,0.65,fear\n")
    summary = make.label_bag(src, tmp_path / "out", csv)
    assert summary == {"bag": str(tmp_path / "out"), "frames": 10, "labelled": 4, "skipped": 0}
    gts = {m.log_time: m.msg.data for m in read_bag(tmp_path / "out", [bags.GROUND_TRUTH_TOPIC])}
    assert gts == {T0 + i * 100_000_000: "fear" for i in (3, 4, 5, 6)}
    assert len(read_bag(tmp_path / "out", [bags.IMAGE_TOPIC])) == 10


def test_label_rows_outside_the_bag_are_reported(tmp_path, capsys):
    """A range past the end (seconds typed as milliseconds) or a frame past the last one labels
    nothing; the summary and `fer-ros bag label` name those rows instead of accepting them silently."""
    import argparse

    from fer_ros.bags import cli

    src = tmp_path / "rec"
    with BagWriter(src) as bag:
        bag.add_topic(bags.IMAGE_TOPIC, bags.IMAGE_TYPE)
        for i in range(10):  # 0.0 .. 0.9 s
            stamp = T0 + i * 100_000_000
            bag.write(bags.IMAGE_TOPIC, stamp, bags.make_image(np.full((4, 4), i, np.uint8), stamp))
    csv = tmp_path / "l.csv"
    csv.write_text("start_s,end_s,label\n0.0,0.3,happy\n250,650,fear\n")
    summary = make.label_bag(src, tmp_path / "out", csv)
    assert summary["labelled"] == 3 and summary["unmatched_labels"] == ["250-650 s fear"]
    (tmp_path / "f.csv").write_text("frame,label\n2,sad\n10,angry\n")
    args = argparse.Namespace(bag_command="label", bag=src, output=tmp_path / "out2", labels=tmp_path / "f.csv",
                              image_topic=bags.IMAGE_TOPIC, storage=None, overwrite=False)
    assert cli.run(args) == 0
    out, err = capsys.readouterr()
    assert "1 of 10 images labelled" in out
    assert "warning: 1 row(s)" in err and "frame 10 angry" in err and "sad" not in err


def test_compact_fer2013_npz_decodes_like_the_full_one(tmp_path):
    """The compact copy stores the JPEG header all files share once (`prefix`): the bag maker
    must give the same images from it as from the full npz."""
    import cv2

    rng = np.random.default_rng(5)
    faces = [cv2.GaussianBlur(rng.integers(0, 256, (48, 48), np.uint8), (5, 5), 0) for _ in range(4)]
    files = [cv2.imencode(".jpg", f)[1].tobytes() for f in faces]
    k = 0
    while all(len(f) > k and f[k] == files[0][k] for f in files):
        k += 1
    assert k > 100  # JPEG headers are shared

    def save(path, blobs, **extra):
        offsets = np.cumsum([0] + [len(b) for b in blobs])
        np.savez(path, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                 labels=np.array([3, 0, 6, 3]), split=np.array([1, 0, 1, 1]),
                 split_names=np.array(["Training", "PublicTest"]), **extra)

    save(tmp_path / "full.npz", files)
    save(tmp_path / "compact.npz", [f[k:] for f in files], prefix=np.frombuffer(files[0][:k], np.uint8))
    full, full_labels = make.load_fer2013(tmp_path / "full.npz", "PublicTest")
    compact, compact_labels = make.load_fer2013(tmp_path / "compact.npz", "PublicTest")
    assert full.shape == (3, 48, 48) and full_labels.tolist() == compact_labels.tolist() == [3, 6, 3]
    assert np.array_equal(full, compact)
    assert np.abs(full[0].astype(int) - faces[0]).mean() < 10  # really the first face, decoded


# ------------------------------------------------------------------ bad bags


def _good_bag(path, storage):
    with BagWriter(path, storage=storage) as bag:
        bag.add_topic(bags.GROUND_TRUTH_TOPIC, bags.STRING_TYPE)
        for i in range(200):
            bag.write(bags.GROUND_TRUTH_TOPIC, T0 + i, bags.make_string("happy" * 20))
    return path


@pytest.mark.parametrize("storage", bags.STORAGES)
def test_truncated_bag_is_a_clear_error(tmp_path, storage):
    path = _good_bag(tmp_path / "bag", storage)
    data = next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(bags.BagError, match="bag"):
        read_bag(path)


def test_not_a_bag_and_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(bags.BagError, match="not a bag"):
        read_bag(tmp_path / "notes.txt")
    with pytest.raises(bags.BagError, match="no such bag"):
        read_bag(tmp_path / "nothing")
    with pytest.raises(bags.BagError, match="no metadata.yaml"):
        read_bag(tmp_path)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "metadata.yaml").write_text("just: [some, yaml\n")
    with pytest.raises(bags.BagError, match="cannot be opened"):
        read_bag(fake)
    fake_mcap = tmp_path / "x.mcap"
    fake_mcap.write_bytes(b"\x89MCAP0\r\n" + b"\0" * 50)
    with pytest.raises(bags.BagError):
        read_bag(fake_mcap)


def test_unknown_type_without_definition(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = tmp_path / "bag"
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        conn = w.add_connection("/mystery", "acme_msgs/msg/Thing", msgdef="", rihs01="RIHS01_" + "0" * 64)
        w.write(conn, T0, b"\0\1\0\0\1\2\3\4")
    with BagReader(path) as bag:
        assert bag.topics == {"/mystery": "acme_msgs/msg/Thing"}
        with pytest.raises(bags.BagError, match="unknown message type acme_msgs/msg/Thing"):
            list(bag.messages())
        assert len(list(bag.messages(raw=True))) == 1  # raw copying still works


def test_unknown_type_with_embedded_definition_is_decoded(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    other = get_typestore(Stores.EMPTY)
    other.register(get_types_from_msg("int32 a\nstring b", "acme_msgs/msg/Pair"))
    msg = other.types["acme_msgs/msg/Pair"](a=-7, b="seven")
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/pair", "acme_msgs/msg/Pair", typestore=other)
        w.write(conn, T0, other.serialize_cdr(msg, "acme_msgs/msg/Pair"))
    (got,) = read_bag(tmp_path / "bag")
    assert (got.msg.a, got.msg.b) == (-7, "seven")


def test_background_writer_does_not_wait_on_a_slow_disk(tmp_path):
    """A real-time caller's write() returns at once while the disk takes 50 ms a message;
    close() writes everything queued, in order; a failing disk is reported, not hidden."""
    import time

    bag = BagWriter(tmp_path / "bag", background=True)
    bag.add_topic("/s", bags.STRING_TYPE)
    real_write = bag._writer.write

    def slow_write(*args):
        time.sleep(0.05)
        real_write(*args)

    bag._writer.write = slow_write
    t0 = time.perf_counter()
    for i in range(20):
        bag.write("/s", T0 + i, bags.make_string(str(i)))
    queued_s = time.perf_counter() - t0
    bag.close()
    closed_s = time.perf_counter() - t0
    assert queued_s < 0.25 and closed_s >= 20 * 0.05  # the 1 s of disk time went to close()
    back = read_bag(tmp_path / "bag")
    assert [m.msg.data for m in back] == [str(i) for i in range(20)] and bag.counts["/s"] == 20

    bad = BagWriter(tmp_path / "bad", background=True)
    bad.add_topic("/s", bags.STRING_TYPE)
    bad._writer.write = lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    bad.write("/s", T0, bags.make_string("x"))
    with pytest.raises(bags.BagError, match="No space left"):
        bad.close()


def test_writer_refuses_to_clobber(tmp_path):
    path = _good_bag(tmp_path / "bag", "mcap")
    with pytest.raises(bags.BagError, match="exists already"):
        BagWriter(path)
    BagWriter(path, overwrite=True).close()  # an old bag may be replaced on request
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(bags.BagError, match="not a rosbag2 folder"):
        BagWriter(tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "thesis.tex").exists()


def _cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fer_ros.cli", "bag", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_cli_bad_bags_exit_nonzero_without_traceback(tmp_path):
    path = _good_bag(tmp_path / "gt_only", "mcap")  # has ground truth, no expressions
    truncated = _good_bag(tmp_path / "trunc", "sqlite3")
    db = next(truncated.glob("*.db3"))
    os.truncate(db, db.stat().st_size // 3)
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (["evaluate", path], "/faces/expressions"),
        (["evaluate", truncated], "trunc"),
        (["evaluate", tmp_path / "notes.txt"], "not a bag"),
        (["replay", tmp_path / "missing_bag", "-o", tmp_path / "o"], "no such bag"),
        (["replay", path, "-o", tmp_path / "o2"], "/camera/image_raw"),
        (["from-video", tmp_path / "notes.txt", "-o", tmp_path / "v"], "cannot open video"),
    ]
    for args, needle in cases:
        proc = _cli(*args)
        assert proc.returncode != 0, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "o2").exists()


def test_msg_dir_found():
    assert (bags.msg_dir() / "FaceExpression.msg").is_file()


def test_cli_rejects_unknown_or_mistyped_node_parameters(tmp_path):
    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        w.add_topic(bags.IMAGE_TOPIC, bags.IMAGE_TYPE)
        w.write(bags.IMAGE_TOPIC, T0, bags.make_image(np.zeros((8, 8), np.uint8), T0))
    for param, needle in (("detecter:=whole", "no parameter 'detecter'"),
                          ("smoothing:=lots", "smoothing must be a float"),
                          ("publish_annotated:=3", "true or false")):
        proc = _cli("replay", bag, "--fast", "-p", param, "-o", tmp_path / "out")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()  # no empty output bag left behind


def test_installed_custom_type_is_loaded_from_its_msg_file(tmp_path, monkeypatch):
    """`record` can store a topic of any installed package: definitions come from share/<pkg>/msg."""
    share = tmp_path / "prefix" / "share" / "acme_test_msgs" / "msg"
    share.mkdir(parents=True)
    (share / "Reading.msg").write_text("# a sensor reading\nstd_msgs/Header header\nacme_test_msgs/Level level\n"
                                       "geometry_msgs/Point[] points\n")
    (share / "Level.msg").write_text("uint8 LOW=0\nuint8 HIGH=1\nuint8 value\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    with BagWriter(tmp_path / "bag") as bag:
        bag.add_topic("/reading", "acme_test_msgs/msg/Reading")
        ts = bags.typestore()
        Point = ts.types["geometry_msgs/msg/Point"]
        msg = ts.types["acme_test_msgs/msg/Reading"](
            header=bags.make_header(T0), level=ts.types["acme_test_msgs/msg/Level"](value=1),
            points=[Point(x=1.0, y=2.0, z=3.0)])
        bag.write("/reading", T0, msg)
    (got,) = read_bag(tmp_path / "bag")
    assert got.msg.level.value == 1 and got.msg.points[0].z == 3.0
    with pytest.raises(bags.BagError, match="unknown message type acme_test_msgs/msg/Missing"):
        BagWriter(tmp_path / "bag2").add_topic("/x", "acme_test_msgs/msg/Missing")

"""`fer-ros analyze` on real media: JSON per frame, annotated outputs, user mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO, make_onnx_model, need_shared
from fer_ros import LABELS
from fer_ros.cli import main as cli_main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_onnx_model(tmp_path_factory.mktemp("m") / "rand.onnx"))


def run_cli(*args):
    """Run `python -m fer_ros.cli analyze ...` as a user would; (rc, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "fer_ros.cli", "analyze", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_image_json_and_annotation(model, tmp_path, capsys):
    src = need_shared("media", "multi_face.jpg")
    out_json, out_img = tmp_path / "r.json", tmp_path / "ann" / "multi.png"
    rc = cli_main(["analyze", str(src), "--model", model, "--json", str(out_json), "--annotate", str(out_img)])
    assert rc == 0
    assert "multi_face.jpg: " in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert doc["backend"] == "onnxruntime" and doc["model"] == model
    (item,) = doc["inputs"]
    assert item["kind"] == "image" and (item["width"], item["height"]) == (1000, 667)
    faces = item["frames"][0]["faces"]
    assert len(faces) >= 4
    for f in faces:
        assert f["expression"] in LABELS and list(f["scores"]) == list(LABELS)
        assert abs(sum(f["scores"].values()) - 1) < 1e-3
    ann, orig = cv2.imread(str(out_img)), cv2.imread(str(src))
    assert ann.shape == orig.shape
    x, y, w, h = faces[0]["box"]
    # the box outline was drawn: its top edge differs from the photo, the far background not
    assert np.abs(ann[y, x:x + w].astype(int) - orig[y, x:x + w]).mean() > 20
    assert np.abs(ann[5:40, 5:40].astype(int) - orig[5:40, 5:40]).mean() < 3


def test_video_json_and_annotated_video(model, tmp_path):
    src = need_shared("media", "single_face.mp4")
    out_json, out_vid = tmp_path / "v.json", tmp_path / "v.mp4"
    rc = cli_main(["analyze", str(src), "--model", model, "--json", str(out_json), "--annotate", str(out_vid),
                   "--stride", "2", "--quiet"])
    assert rc == 0
    (item,) = json.loads(out_json.read_text())["inputs"]
    assert item["kind"] == "video" and item["fps"] == pytest.approx(30, abs=1)
    assert [f["frame"] for f in item["frames"]] == list(range(0, 72, 2))
    assert item["frames"][1]["time_s"] == pytest.approx(2 / 30, abs=1e-3)
    ids = {face["face_id"] for f in item["frames"] for face in f["faces"]}
    assert ids == {1}
    cap = cv2.VideoCapture(str(out_vid))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 36
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (640, 360)


def test_folder_with_a_corrupt_file(model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(need_shared("media", "single_face.jpg"), folder / "a.jpg")
    shutil.copy(need_shared("media", "0-f15-hao-ph.jpg"), folder / "b.jpg")
    (folder / "c.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("ignored")
    rc, out, err = run_cli(folder, "--model", model, "--json", tmp_path / "f.json", "--annotate", tmp_path / "ann")
    assert rc == 0, err
    assert "c.jpg" in err and "Traceback" not in err
    doc = json.loads((tmp_path / "f.json").read_text())
    assert [p.split("/")[-1] for p in (i["path"] for i in doc["inputs"])] == ["a.jpg", "b.jpg"]
    assert all(len(i["frames"][0]["faces"]) == 1 for i in doc["inputs"])
    assert [i["frames"][0]["faces"][0]["face_id"] for i in doc["inputs"]] == [1, 1]  # ids per file
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["a.jpg", "b.jpg"]


def test_user_mistakes_give_a_message_not_a_traceback(model, tmp_path):
    rc, _, err = run_cli(tmp_path / "missing.jpg", "--model", model)
    assert rc == 2 and "no such file" in err and "Traceback" not in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    rc, _, err = run_cli(bad, "--model", model)
    assert rc != 0 and "cannot read image" in err and "Traceback" not in err
    rc, _, err = run_cli(need_shared("media", "single_face.jpg"), "--model", tmp_path / "nomodel.onnx")
    assert rc == 2 and "nomodel.onnx" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(tmp_path / "empty", "--model", model)
    assert rc == 2 and "no images or videos" in err
    rc, _, err = run_cli(need_shared("media", "single_face.jpg"), "--detector", "yunet", "--model", model)
    assert rc == 2 and "--detector-model" in err


def test_draw_results_returns_an_annotated_bgr_copy():
    from fer_ros.perception.annotate import COLORS, draw_results
    from fer_ros.perception.pipeline import FaceResult

    scores = np.array([0.05, 0.05, 0.05, 0.7, 0.05, 0.05, 0.05], np.float32)
    r = FaceResult(7, (40, 60, 100, 100), "happy", 0.7, scores, 0.9)
    for frame in (np.full((240, 320), 50, np.uint8), np.full((240, 320, 4), 50, np.uint8),
                  np.full((240, 320, 3), 50, np.uint8)):
        before = frame.copy()
        out = draw_results(frame, [r])
        assert out.shape == (240, 320, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(frame, before)  # the input is not drawn on
        assert tuple(out[110, 40]) == COLORS["happy"]  # the box's left edge in the label's colour
        assert (out[:50] != 50).any()  # the "#7 happy 70%" label above the box
    assert draw_results(np.zeros((10, 10, 3), np.uint8), []).shape == (10, 10, 3)


def test_annotate_below_a_file_is_a_clear_error(model, tmp_path, capsys):
    """--annotate under a path whose parent is a file: one line saying so, no traceback, nothing written."""
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 128, np.uint8))
    rc = cli_main(["analyze", str(img), "--model", model, "--annotate", str(blocker / "out.png"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write the annotated output" in err and str(blocker) in err
    assert blocker.read_text() == "a file, not a folder"


def _jpeg(tmp_path, name, keep: float = 1.0):
    """A 160x120 JPEG of a gradient, cut to `keep` of its bytes (a copy stopped mid-way)."""
    y, x = np.mgrid[0:120, 0:160]
    data = cv2.imencode(".jpg", np.dstack([x, y, x + y]).astype(np.uint8))[1].tobytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_jpeg_is_warned_about(model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _jpeg(folder, "whole.jpg")
    cut = _jpeg(folder, "cut.jpg", keep=0.5)
    assert cv2.imread(str(cut)) is not None  # OpenCV decodes it without an error: the case to catch
    rc = cli_main(["analyze", str(folder), "--model", model, "--json", str(tmp_path / "r.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "cut.jpg is truncated" in err and "whole.jpg" not in err
    items = {i["path"].split("/")[-1]: i for i in json.loads((tmp_path / "r.json").read_text())["inputs"]}
    assert "truncated" in items["cut.jpg"]["warnings"][0] and "warnings" not in items["whole.jpg"]


def test_folder_of_only_unreadable_images_says_so(model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "b.png").write_bytes(b"\x89PNG garbage")
    rc = cli_main(["analyze", str(folder), "--model", model, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "a.jpg" in err and "b.png" in err  # each file's reason
    assert "none of the 2 image/video files" in err and "Traceback" not in err

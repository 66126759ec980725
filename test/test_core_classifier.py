"""ExpressionClassifier: output contract, batching, bad inputs, model errors, backends.

Accuracy-independent tests use a small random ONNX model built here (so they run before the
trained model exists); tests that need the shipped model skip with a reason while it is missing.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import onnx
import pytest

from conftest import faces, frames, make_onnx_model, need_shared
from fer_ros import LABELS
from fer_ros.perception.classifier import ExpressionClassifier, default_int8_model_path, default_model_path
from fer_ros.perception.preprocess import crop_face, crop_faces, normalize, tta_views


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_onnx_model(tmp_path_factory.mktemp("model") / "rand.onnx")


@pytest.fixture(scope="module")
def clf(model_path):
    return ExpressionClassifier(model_path, backend="onnxruntime")


def real_model(path=None) -> ExpressionClassifier:
    """The shipped model (default: as ExpressionClassifier() picks it; or one of its files)."""
    if not default_model_path().is_file():
        pytest.skip(f"the trained model is not there yet: {default_model_path()}")
    return ExpressionClassifier(path, backend="onnxruntime")


def test_default_model_paths_point_at_the_shipped_files():
    """The package ships its model; a moved module must not lose it (the tests above skip
    while it is missing, so this one must not)."""
    from fer_ros.perception.models import default_int8_model_path

    assert default_model_path().is_file(), default_model_path()
    assert default_int8_model_path().parent == default_model_path().parent


def test_probabilities_shape_and_sum(clf):
    p = clf.predict(faces(5))
    assert p.shape == (5, len(LABELS)) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()
    # a random model still gives different outputs for different faces (not a constant)
    assert np.abs(p[0] - p[1]).max() > 1e-3


def test_empty_batch(clf):
    p = clf.predict(np.zeros((0, 48, 48), np.uint8))
    assert p.shape == (0, 7) and p.dtype == np.float32


def test_batch_equals_one_by_one(clf):
    x = faces(9)
    batch = clf.predict(x)
    single = np.concatenate([clf.predict(f[None]) for f in x])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(clf.predict(x[3]), batch[3:4], atol=1e-5)  # a 2-D crop is one face


def test_flip_average_is_the_mean_over_face_and_mirror_image(model_path):
    """flip_average (the default): logits are the mean of the plain model's on the face and on
    its mirror image (in one batch), so a face and its mirror image get the same answer."""
    flip = ExpressionClassifier(model_path, backend="onnxruntime", crop_average=False)
    plain = ExpressionClassifier(model_path, backend="onnxruntime", flip_average=False, crop_average=False)
    assert flip.flip_average and not plain.flip_average
    x = faces(6)
    mirrored = x[:, :, ::-1]
    want = (plain.predict_logits(x) + plain.predict_logits(mirrored)) / 2
    assert np.abs(plain.predict_logits(x) - plain.predict_logits(mirrored)).max() > 1e-3  # the model is not symmetric
    np.testing.assert_allclose(flip.predict_logits(x), want, atol=1e-5)
    np.testing.assert_allclose(flip.predict(mirrored), flip.predict(x), atol=1e-5)
    assert flip.predict(x[:1]).shape == (1, 7) and flip.predict(x[:0]).shape == (0, 7)


def test_crop_average_is_the_mean_over_five_crops_and_their_mirror_images(model_path):
    """crop_average + flip_average (config/therapy.yaml): the mean of the plain model's logits on the
    face, its centre and four corner crops of 90% side (each resized back to 48x48) and the
    mirror images of all six; a face and its mirror image still get the same answer."""
    both = ExpressionClassifier(model_path, backend="onnxruntime", crop_average=True)
    crops = ExpressionClassifier(model_path, backend="onnxruntime", flip_average=False, crop_average=True)
    plain = ExpressionClassifier(model_path, backend="onnxruntime", flip_average=False, crop_average=False)
    assert both.crop_average and both.flip_average
    assert not ExpressionClassifier(model_path, backend="onnxruntime").crop_average  # off by default
    x = faces(5)
    h = 48 * 0.9
    boxes = [(2.4, 2.4, h, h), (0, 0, h, h), (4.8, 0, h, h), (0, 4.8, h, h), (4.8, 4.8, h, h)]
    views = [x] + [np.stack([crop_face(f, b) for f in x]) for b in boxes]
    assert all(v.shape == x.shape for v in views)
    per_view = np.stack([plain.predict_logits(v) for v in views])
    assert np.abs(per_view[1] - per_view[0]).max() > 1e-3  # a crop is a different input
    np.testing.assert_allclose(crops.predict_logits(x), per_view.mean(0), atol=1e-5)
    mirrored = np.stack([plain.predict_logits(np.ascontiguousarray(v[:, :, ::-1])) for v in views])
    np.testing.assert_allclose(both.predict_logits(x), np.concatenate([per_view, mirrored]).mean(0), atol=1e-5)
    np.testing.assert_allclose(both.predict(x[:, :, ::-1]), both.predict(x), atol=1e-5)
    np.testing.assert_allclose(both.predict(x[2]), both.predict(x)[2:3], atol=1e-5)  # batch = one by one
    assert both.predict(x[:0]).shape == (0, 7)
    for crops_, flip_, v in ((True, True, 12), (True, False, 6), (False, True, 2), (False, False, 1)):
        assert tta_views(x, crops_, flip_).shape == (v, 5, 48, 48)
        assert tta_views(x[:0], crops_, flip_).shape == (v, 0, 48, 48)  # the same views for no faces


def test_bad_inputs_have_clear_errors(clf):
    with pytest.raises(ValueError, match="uint8"):
        clf.predict(faces(2).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, 48, 48\]"):
        clf.predict(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, 48, 48\]"):
        clf.predict(np.zeros((2, 48, 48, 3), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        clf.predict([[0] * 48] * 48)


def test_missing_and_corrupt_model(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        ExpressionClassifier(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ValueError, match="corrupt.onnx"):
        ExpressionClassifier(corrupt, backend="onnxruntime")
    wrong = make_onnx_model(tmp_path / "wrong.onnx", n_out=5)
    with pytest.raises(ValueError, match=r"expected \[N, 7\]"):
        ExpressionClassifier(wrong, backend="onnxruntime")
    with pytest.raises(ValueError, match="unknown classifier backend"):
        ExpressionClassifier(tmp_path / "x.onnx", backend="cuda-magic")


def test_tensorrt_request_falls_back_to_onnxruntime(model_path, monkeypatch, caplog):
    import fer_ros.perception.tensorrt_backend as trtb

    def broken(*a, **k):
        raise RuntimeError("engine built for another GPU")

    monkeypatch.setattr(trtb, "TensorRTBackend", broken)
    with caplog.at_level(logging.WARNING):
        c = ExpressionClassifier(model_path, backend="tensorrt")
    assert c.backend == "onnxruntime"
    assert "falling back to onnxruntime" in caplog.text and "another GPU" in caplog.text
    assert c.predict(faces(2)).shape == (2, 7)


def test_auto_backend_without_tensorrt(model_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here: auto may pick it")
    except ImportError:
        pass
    assert ExpressionClassifier(model_path).backend == "onnxruntime"


def test_torch_backend_matches_onnx_export(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(16, 7)).eval()
    ts_path = tmp_path / "ckpt.pt"
    torch.jit.trace(net, torch.zeros(1, 1, 48, 48)).save(str(ts_path))
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(net, torch.zeros(2, 1, 48, 48), str(onnx_path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    x = faces(6)
    p_torch = ExpressionClassifier(ts_path, backend="torch").predict(x)
    p_onnx = ExpressionClassifier(onnx_path, backend="onnxruntime").predict(x)
    np.testing.assert_allclose(p_torch, p_onnx, atol=1e-4)


def test_fer2013_inference_path_equals_training_path(clf, monkeypatch):
    """A FER-2013 48x48 image fed through the inference path (pipeline, `whole` detector)
    reaches the network exactly as the training path (crop_faces + normalize) produces it."""
    from fer_ros.perception.pipeline import ExpressionPipeline

    d = np.load(need_shared("data", "fer2013.npz"))
    a, b = d["offsets"][0], d["offsets"][1]
    img = cv2.imdecode(d["jpeg"][a:b], cv2.IMREAD_GRAYSCALE)
    assert img.shape == (48, 48)
    training_input = normalize(crop_faces(img, [(0, 0, 48, 48)]))
    seen = []
    real_logits = clf._impl.logits
    monkeypatch.setattr(clf._impl, "logits", lambda x: seen.append(x.copy()) or real_logits(x))
    pipe = ExpressionPipeline(detector="whole", classifier=clf, tracking=False, min_face_size=1)
    res = pipe.process(img)
    assert len(res) == 1 and res[0].box == (0, 0, 48, 48)
    np.testing.assert_array_equal(seen[0][:1], training_input)
    # the rest of the batch: the test-time views (crops, mirror images) of that same crop
    views = tta_views(crop_faces(img, [(0, 0, 48, 48)]), clf.crop_average, clf.flip_average)
    assert len(seen[0]) == len(views) == (1 + 5 * clf.crop_average) * (1 + clf.flip_average)
    np.testing.assert_array_equal(seen[0], normalize(views.reshape(-1, 48, 48)))
    assert training_input.min() >= -1.0 and training_input.max() <= 1.0
    np.testing.assert_allclose(res[0].scores, clf.predict(img[None])[0], atol=1e-6)


def test_real_model_recognises_clear_expressions():
    """The shipped model on two unambiguous photos (a surprised and a happy face)."""
    from fer_ros.perception.pipeline import ExpressionPipeline

    pipe = ExpressionPipeline(classifier=real_model(), tracking=False)
    for name, expected in (("0-f1-su-ph.jpg", "surprise"), ("0-f15-hao-ph.jpg", "happy")):
        res = pipe.process(cv2.imread(str(need_shared("media", name))))
        assert len(res) == 1, name
        assert res[0].expression == expected, (name, res[0].to_dict())


@pytest.mark.parametrize("model", ["fp32", "int8"])
def test_published_label_follows_a_real_face_through_a_video(model):
    """single_face.mp4 through the default pipeline (detector, crop, tracking, smoothing), as a
    camera would feed it. Annotated by eye, not by a model: frames 0-15 a face at rest, 24-66 a
    broad smile with teeth showing. The label must follow the face, without flicker."""
    from fer_ros.perception.pipeline import ExpressionPipeline

    path = default_model_path() if model == "fp32" else default_int8_model_path()
    pipe = ExpressionPipeline(classifier=real_model(path))
    labels = []
    for i, f in enumerate(frames("single_face.mp4")):
        res = pipe.process(f, stamp=i / 30.0)
        labels.append(res[0].expression if res else None)
    rest, smile = labels[0:16], labels[24:67]
    assert rest.count("neutral") >= 0.9 * len(rest), labels
    assert smile.count("happy") >= 0.9 * len(smile), labels
    changes = sum(a != b for a, b in zip(labels, labels[1:]))
    assert changes <= 4, labels  # rest -> smile -> rest, with room for one hesitation


def test_real_model_fer2013_publictest_accuracy():
    """Well above chance (1/7; majority class 25%) on 700 FER-2013 PublicTest images."""
    clf = real_model()
    d = np.load(need_shared("data", "fer2013.npz"))
    idx = np.flatnonzero(d["split"] == 1)[:700]
    off, jpeg = d["offsets"], d["jpeg"]  # read each npz member once (every access decompresses it)
    imgs = np.stack([cv2.imdecode(jpeg[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in idx])
    acc = float((clf.predict(imgs).argmax(1) == d["labels"][idx]).mean())
    assert acc >= 0.5, acc
    plain = ExpressionClassifier(backend="onnxruntime", flip_average=False)
    assert float((plain.predict(imgs).argmax(1) == d["labels"][idx]).mean()) >= 0.5


def test_training_checkpoint_with_torch_backend_matches_its_onnx_export(tmp_path):
    """The checkpoint format of training/ (config + state_dict) loads in the torch backend and
    gives the same probabilities as its ONNX export through onnxruntime."""
    torch = pytest.importorskip("torch")
    model_mod = pytest.importorskip("training.model", reason="training package not available")
    export_mod = pytest.importorskip("training.export", reason="training package not available")
    torch.manual_seed(0)
    net = model_mod.MobileNetV1(width=0.25).eval()
    ckpt = tmp_path / "best.pt"
    model_mod.save_checkpoint(ckpt, net)
    onnx_path = export_mod.export_onnx(net, tmp_path / "net.onnx")
    x = faces(5)
    c_torch = ExpressionClassifier(ckpt, backend="torch")
    assert c_torch.backend == "torch"
    np.testing.assert_allclose(c_torch.predict(x), ExpressionClassifier(onnx_path, backend="onnxruntime").predict(x),
                               atol=1e-4)


def test_torch_backend_rejects_a_non_model(tmp_path):
    torch = pytest.importorskip("torch")
    junk = tmp_path / "junk.pt"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(ValueError, match="junk.pt"):
        ExpressionClassifier(junk, backend="torch")


def test_int8_quantized_copy_keeps_the_contract_and_the_answers(tmp_path):
    """quantize_int8 on a small conv net: same I/O contract, probabilities close to FP32."""
    torch = pytest.importorskip("torch")
    from training.quantize import quantize_int8

    d = np.load(need_shared("data", "fer2013.npz"))
    off, jpeg = d["offsets"], d["jpeg"]  # read each npz member once (every access decompresses it)
    imgs = np.stack([cv2.imdecode(jpeg[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(160)])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, 2, 1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(16, 7)).eval()
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(net, torch.zeros(2, 1, 48, 48), str(fp32), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", imgs[:128])
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops
    p32 = ExpressionClassifier(fp32, backend="onnxruntime").predict(imgs[128:])
    p8 = ExpressionClassifier(int8, backend="onnxruntime").predict(imgs[128:])
    assert np.abs(p32 - p8).max() < 0.05
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(fp32, tmp_path / "x.onnx", np.zeros((0, 48, 48), np.uint8))


def test_shipped_int8_copy_agrees_with_the_fp32_model():
    """If the package ships an INT8 copy (used on CPU by default), it must be as accurate as
    the FP32 model (within 1 point) and mostly give the same answers on real faces."""
    from fer_ros.perception.classifier import default_int8_model_path

    real_model()  # skips while the trained model is missing
    if not default_int8_model_path().is_file():
        pytest.skip(f"no INT8 copy shipped at {default_int8_model_path()}")
    int8 = ExpressionClassifier(backend="onnxruntime")
    assert int8.model_path == default_int8_model_path()
    assert ExpressionClassifier(backend="onnxruntime", int8=False).model_path == default_model_path()
    d = np.load(need_shared("data", "fer2013.npz"))
    idx = np.flatnonzero(d["split"] == 1)[:1000]
    off, jpeg = d["offsets"], d["jpeg"]  # read each npz member once (every access decompresses it)
    imgs = np.stack([cv2.imdecode(jpeg[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in idx])
    y = d["labels"][idx]
    a = ExpressionClassifier(backend="onnxruntime", int8=False).predict(imgs).argmax(1)
    b = int8.predict(imgs).argmax(1)
    assert (b == y).mean() >= (a == y).mean() - 0.01  # at most 1 point less accurate
    assert (a == b).mean() >= 0.9


def test_shipped_int8_copy_was_made_from_the_shipped_model():
    """A re-trained FP32 model shipped without re-running `python -m training.quantize` would
    leave a stale INT8 copy that the CPU backend prefers: the card records its source's hash."""
    import hashlib
    import json

    from fer_ros.perception.classifier import default_int8_model_path

    if not default_int8_model_path().is_file():
        pytest.skip(f"no INT8 copy shipped at {default_int8_model_path()}")
    card = json.loads(default_model_path().with_name("model_card.json").read_text())
    assert card["int8"]["file"] == default_int8_model_path().name
    assert card["int8"]["from_sha256"] == hashlib.sha256(default_model_path().read_bytes()).hexdigest()

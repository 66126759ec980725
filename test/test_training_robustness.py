"""training.robustness on a small PublicTest subset, and the shared labelled photos through the
whole default pipeline (detector, calibrated crop, shipped model)."""

import cv2
import numpy as np
import pytest

from conftest import need_shared
from fer_ros.perception.classifier import ExpressionClassifier
from fer_ros.perception.pipeline import ExpressionPipeline
from training import robustness as R


def test_reframe_identity_and_zoom():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    assert np.array_equal(R.reframe(faces, 1.0), faces)
    wide = R.reframe(faces, 1.25)  # zoomed out: the border is repeated around the face
    inner = cv2.resize(wide[0], None, fx=1.25, fy=1.25)[6:54, 6:54]
    assert np.abs(inner.astype(int) - faces[0]).mean() < np.abs(wide[0].astype(int) - faces[0]).mean()


def test_robustness_report_on_a_subset():
    shared = need_shared("data", "fer2013.npz").parents[1]
    need_shared("data", "jaffe.npz")
    res = R.run(R.ExpressionClassifier().model_path, shared, views=(1,), limit=120)
    table = res["views"]["1"]["publictest"]
    names = [n for n, _ in R.conditions()]
    assert list(table) == names and names[0] == "clean"
    # the clean row is the classifier's own accuracy on those faces
    from training import data as D
    fer = D.load_fer2013(shared / "data" / "fer2013.npz")
    test = fer.subset(np.flatnonzero(fer.split == 1))
    clf = ExpressionClassifier(flip_average=False)
    want = 100 * float((clf.predict(test.faces48()[:120]).argmax(1) == test.labels[:120]).mean())
    assert table["clean"] == pytest.approx(want, abs=0.01)
    assert all(0 <= v <= 100 for v in table.values())
    assert table["blur 2"] < table["clean"]  # a blurred face loses detail: the report must show it


@pytest.mark.parametrize("name,label", sorted(R.MEDIA_LABELS.items()))
def test_labelled_photos_come_out_right_through_the_pipeline(name, label):
    img = cv2.imread(str(need_shared("media", name)))
    res = ExpressionPipeline(tracking=False).process(img)
    assert res, f"no face found in {name}"
    face = max(res, key=lambda r: r.box[2] * r.box[3])
    assert face.expression == label, (name, face.expression, face.confidence)

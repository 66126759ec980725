"""training.unfold puts the BatchNorm layers the ONNX export folded away back into a trainable
network: it reproduces the shipped model exactly in evaluation mode and closely in training mode."""

import numpy as np
import torch

from conftest import need_shared
from fer_ros.perception.classifier import ExpressionClassifier
from fer_ros.perception.preprocess import normalize
from training import data as D
from training.unfold import unfold


def test_unfolded_shipped_model_matches_the_onnx_file():
    fer = D.load_fer2013(need_shared("data", "fer2013.npz"))
    train = fer.images[np.flatnonzero(fer.split == 0)[:256]]
    test = fer.images[np.flatnonzero(fer.split == 1)[:128]]
    clf = ExpressionClassifier(int8=False, backend="onnxruntime", flip_average=False)
    model = unfold(clf.model_path, train)
    with torch.no_grad():
        got = model(torch.from_numpy(normalize(test))).numpy()
    ref = clf.predict_logits(test)
    assert np.abs(got - ref).max() < 1e-3
    # training mode normalises with the batch's own statistics: close to the same answers
    model.train()
    model.drop.p = 0.0
    with torch.no_grad():
        tr = model(torch.from_numpy(normalize(train[:128]))).numpy()
    assert (tr.argmax(1) == clf.predict_logits(train[:128]).argmax(1)).mean() > 0.8

"""training.compare: the exact McNemar test, and a paired run on a small PublicTest subset."""

import math

import numpy as np
import pytest

from conftest import need_shared
from fer_ros.perception.classifier import ExpressionClassifier
from training import compare as C


def test_mcnemar_exact_values():
    assert C.mcnemar_p(0, 0) == 1.0
    assert C.mcnemar_p(5, 5) == 1.0  # an even split is no evidence either way
    assert C.mcnemar_p(0, 6) == pytest.approx(2 / 64)  # all six discordant faces favour one model
    assert C.mcnemar_p(18, 11) == C.mcnemar_p(11, 18)
    p = sum(math.comb(29, i) for i in range(12)) / 2 ** 29 * 2
    assert C.mcnemar_p(18, 11) == pytest.approx(p)
    assert 0.2 < p < 0.3
    # thousands of discordant faces (a pooled PublicTest test): no float overflow, a sensible answer
    assert C.mcnemar_p(1500, 1500) == 1.0
    assert 0 <= C.mcnemar_p(1000, 1400) < 1e-9


def test_paired_counts():
    y = np.array([0, 1, 2, 3, 4])
    r = C.paired(y, np.array([0, 1, 2, 0, 0]), np.array([0, 0, 2, 3, 4]))
    assert (r["a"], r["b"], r["only_a"], r["only_b"]) == (60.0, 80.0, 1, 2)


def test_compare_a_model_with_itself_and_with_its_flip_average():
    shared = need_shared("data", "fer2013.npz").parents[1]
    model = ExpressionClassifier().model_path
    res = C.run(model, model, shared, views=(1, 2), limit=150)
    for rows in res["views"].values():
        assert list(rows) == ["PublicTest", "PublicTest, box 1.25x", "PublicTest, shift y +-8%"]
        for r in rows.values():
            assert r["a"] == r["b"] and r["only_a"] == r["only_b"] == 0 and r["p"] == 1.0
    assert res["views"]["1"]["PublicTest, shift y +-8%"]["n"] == 300  # both directions pooled
    # the same model with 1 and 2 views differs on some faces: the counts must see it
    one, two = res["views"]["1"]["PublicTest"], res["views"]["2"]["PublicTest"]
    assert one["a"] != two["a"]

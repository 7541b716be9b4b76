"""Routing metrics on tiny examples computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from verifiers.metrics import (
    apgr,
    cpt,
    expected_calibration_error,
    fixed_policy,
    roc_auc,
    routing_curve,
    summarize,
)

# small right on rows 2 and 3, large right on 0, 1, 2: acc_small 0.5, acc_large 0.75.
SMALL = [0, 0, 1, 1]
LARGE = [1, 1, 1, 0]
GAIN = np.array(LARGE) - np.array(SMALL)  # [1, 1, 0, -1]


def test_oracle_curve_by_hand() -> None:
    curve = routing_curve(GAIN, SMALL, LARGE)
    assert curve.acc_small == 0.5 and curve.acc_large == 0.75
    np.testing.assert_allclose(curve.accuracy, [0.5, 0.75, 1.0, 1.0, 0.75])
    np.testing.assert_allclose(curve.pgr, [0, 1, 2, 2, 1])
    # trapezoids of width 1/4: (0+1)/2 + (1+2)/2 + (2+2)/2 + (2+1)/2 = 5.5
    assert apgr(curve) == pytest.approx(5.5 / 4)
    assert cpt(curve, 0.5) == 0.25
    assert cpt(curve, 0.8) == 0.25


def test_reversed_oracle_by_hand() -> None:
    curve = routing_curve(-GAIN, SMALL, LARGE)
    np.testing.assert_allclose(curve.accuracy, [0.5, 0.25, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(curve.pgr, [0, -1, -1, 0, 1])
    assert apgr(curve) == pytest.approx(-1.5 / 4)
    assert cpt(curve, 0.5) == 1.0


def test_constant_score_is_the_random_router_exactly() -> None:
    curve = routing_curve(np.zeros(4), SMALL, LARGE)
    np.testing.assert_allclose(curve.pgr, [0, 0.25, 0.5, 0.75, 1.0])
    assert apgr(curve) == pytest.approx(0.5)
    assert cpt(curve, 0.5) == 0.5
    assert cpt(curve, 0.8) == 1.0


def test_tie_rule_equals_the_mean_over_every_order() -> None:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 2, 6)
    large = rng.integers(0, 2, 6)
    large[0], small[0] = 1, 0  # make sure there is a gap
    scores = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 0.0])  # two tied groups
    tied = routing_curve(scores, small, large).accuracy
    orders = []
    for first in itertools.permutations(range(3)):
        for second in itertools.permutations(range(3, 5)):
            order = [*first, *second, 5]
            distinct = np.empty(6)
            distinct[order] = np.arange(6, 0, -1)  # strictly decreasing along the order
            orders.append(routing_curve(distinct, small, large).accuracy)
    np.testing.assert_allclose(tied, np.mean(orders, axis=0))


def test_row_order_does_not_matter() -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, 40).astype(float)  # many ties
    small = rng.integers(0, 2, 40)
    large = rng.integers(0, 2, 40)
    permutation = rng.permutation(40)
    a = routing_curve(scores, small, large)
    b = routing_curve(scores[permutation], small[permutation], large[permutation])
    np.testing.assert_allclose(a.accuracy, b.accuracy)


def test_random_scores_average_to_half() -> None:
    rng = np.random.default_rng(11)
    small = rng.random(200) < 0.6
    large = rng.random(200) < 0.85
    values = [apgr(routing_curve(rng.random(200), small, large)) for _ in range(300)]
    assert np.mean(values) == pytest.approx(0.5, abs=0.02)


def test_oracle_is_the_best_router() -> None:
    rng = np.random.default_rng(5)
    small = rng.random(300) < 0.6
    large = rng.random(300) < 0.8
    best = apgr(routing_curve(large.astype(float) - small, small, large))
    for _ in range(50):
        assert apgr(routing_curve(rng.random(300), small, large)) < best


def test_pgr_undefined_without_a_gap() -> None:
    curve = routing_curve([0.3, 0.2], [1, 0], [0, 1])
    assert math.isnan(apgr(curve)) and math.isnan(cpt(curve, 0.5))


def test_auc_by_hand_and_against_sklearn() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 10, 500).astype(float)
    labels = rng.integers(0, 2, 500)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_ece_by_hand() -> None:
    # bin of 0.1: mean p 0.1 vs rate 0.5 -> 0.4 * 1/2; bin of 0.9: 0.9 vs 1.0 -> 0.1 * 1/2
    assert expected_calibration_error([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]) == pytest.approx(0.25)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    assert math.isnan(expected_calibration_error([-0.5, 0.5], [0, 1]))


def test_summarize_and_fixed_policies() -> None:
    summary, _ = summarize("oracle", GAIN, SMALL, LARGE)
    assert summary.apgr == pytest.approx(1.375)
    assert summary.cpt50 == 0.25
    always_large = fixed_policy("always-large", True, SMALL, LARGE)
    assert always_large.share == 1.0 and always_large.accuracy == 0.75
    assert fixed_policy("always-small", False, SMALL, LARGE).accuracy == 0.5


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        routing_curve([0.1], [1, 0], [1, 0])
    with pytest.raises(ValueError):
        routing_curve([math.nan, 0.1], [1, 0], [1, 0])

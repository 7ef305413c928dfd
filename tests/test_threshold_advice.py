"""Threshold advice rests on a lower confidence bound, enough accepted images, and never flags (nearly) everything."""

from __future__ import annotations

import json

import numpy as np

from hematovision.app import eval_views
from hematovision.stats import calibration
from hematovision.stats.threshold_advice import MIN_ACCEPTED, advise, needed_for


def _points(conf: np.ndarray, correct: np.ndarray) -> list[dict]:
    probs = np.stack([conf, 1 - conf], axis=1)
    y = np.where(correct, 0, 1)
    return calibration.risk_coverage(probs, y)


def test_twenty_images_all_right_are_too_few_to_choose_a_threshold():
    rng = np.random.default_rng(0)
    pts = _points(rng.uniform(0.6, 1.0, 20), np.ones(20, bool))
    a = advise(pts, 20, 0.99)
    assert a.threshold is None and "too small" in a.message and "20 independent images" in a.message
    # The old rule proposed the lowest grid threshold, 0.25, as "100% accurate".
    assert calibration.threshold_for_accuracy(pts, 0.99) == 0.25


def test_a_threshold_that_flags_everything_is_never_proposed():
    # Kaggle-like: only the top threshold "reaches" 99%, by accepting (almost) nothing.
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 0.99, 2000)
    correct = rng.random(2000) < 0.85
    pts = _points(conf, correct)
    a = advise(pts, 2000, 0.99)
    assert a.threshold is None
    assert all(p["flagged_share"] < 1.0 for p in pts if a.threshold and p["threshold"] == a.threshold)


def test_large_accurate_set_gets_a_threshold_backed_by_its_lower_bound():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.3, 1.0, 3000)
    correct = rng.random(3000) < np.clip(conf + 0.02, 0, 1)
    pts = _points(conf, correct)
    a = advise(pts, 3000, 0.95)
    assert a.threshold is not None and a.lower_bound >= 0.95 and a.accepted >= MIN_ACCEPTED and a.flagged_share <= 0.9
    naive = calibration.threshold_for_accuracy(pts, 0.95)
    assert a.threshold >= naive  # the bound asks for more evidence than the point estimate


def test_copies_of_a_cell_count_once():
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.9, 1.0, 2400)
    pts = _points(conf, np.ones(2400, bool))
    assert advise(pts, 2400, 0.99).threshold is not None
    a = advise(pts, 2400, 0.99, n_independent=70, unit="cells")
    assert a.threshold is None and "70 independent cells" in a.message
    assert needed_for(0.99) == 381


def test_risk_coverage_axes_stay_within_0_and_100_percent():
    s = {
        "risk_coverage": [
            {"threshold": t, "coverage": 0.5, "flagged_share": 0.5, "accuracy_accepted": 1.0} for t in (0.5, 0.9)
        ]
    }
    fig = json.loads(eval_views.risk_coverage_figure(s, 0.6).to_json())
    assert fig["layout"]["yaxis"]["range"][1] <= 1.0 and fig["layout"]["yaxis"]["range"][0] >= 0.0
    assert fig["layout"]["xaxis"]["range"] == [0.0, 1.0]

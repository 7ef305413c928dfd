"""hematovision.stats.metrics and .calibration checked against scikit-learn on the same random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from hematovision.stats import calibration as cal
from hematovision.stats import metrics as m

N_CLS = 4


def random_case(seed: int, n: int = 300, strength: float = 3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLS, n)
    logits = rng.normal(0, 1, (n, N_CLS))
    logits[np.arange(n), y] += rng.uniform(0, strength, n)
    return y, logits, cal.softmax(logits)


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_matches_sklearn(seed):
    y, _, p = random_case(seed)
    pred = p.argmax(1)
    np.testing.assert_array_equal(
        m.confusion_matrix(y, pred, N_CLS), skm.confusion_matrix(y, pred, labels=range(N_CLS))
    )


@pytest.mark.parametrize("seed", range(5))
def test_per_class_and_macro_f1_match_sklearn(seed):
    y, _, p = random_case(seed)
    pred = p.argmax(1)
    pc = m.per_class(m.confusion_matrix(y, pred, N_CLS))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=range(N_CLS), zero_division=0)
    np.testing.assert_allclose(pc["precision"], prec)
    np.testing.assert_allclose(pc["recall"], rec)
    np.testing.assert_allclose(pc["f1"], f1)
    np.testing.assert_array_equal(pc["support"], sup)
    assert m.macro_f1(m.confusion_matrix(y, pred, N_CLS)) == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_per_class_zero_where_undefined():
    # Class 2 never predicted and never true; class 3 predicted but never true.
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 3, 1, 1])
    cm = m.confusion_matrix(y, pred, N_CLS)
    pc = m.per_class(cm)
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=range(N_CLS), zero_division=0)
    np.testing.assert_allclose(pc["precision"], prec)
    np.testing.assert_allclose(pc["recall"], rec)
    np.testing.assert_allclose(pc["f1"], f1)
    # Macro-F1 over the classes present (as sklearn does with its default labels).
    assert m.macro_f1(cm) == pytest.approx(skm.f1_score(y, pred, average="macro"))


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_and_curve_match_sklearn(seed):
    y, _, p = random_case(seed, strength=1.5)
    p = np.round(p, 2)  # ties, as in real confidences
    for k in range(N_CLS):
        fpr, tpr, auc = m.roc_curve_ovr(y, p, k)
        assert auc == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
        sf, st, _ = skm.roc_curve(y == k, p[:, k], drop_intermediate=False)
        np.testing.assert_allclose(fpr, sf)
        np.testing.assert_allclose(tpr, st)


def test_roc_single_class_is_nan():
    y = np.zeros(5, int)
    _, _, auc = m.roc_curve_ovr(y, np.full((5, N_CLS), 0.25), 0)
    assert np.isnan(auc)


def test_thin_curve_keeps_ends_and_bounds_length():
    x = np.linspace(0, 1, 1001)
    fx, ty = m.thin_curve(x, x ** 2, max_points=50)
    assert len(fx) <= 51 and fx[0] == 0.0 and fx[-1] == 1.0 and ty[-1] == 1.0
    assert m.thin_curve(x[:10], x[:10])[0] == list(x[:10])


def test_wilson_interval_known_values():
    lo, hi = m.wilson_interval(71, 71)
    assert hi == 1.0 and lo == pytest.approx(0.9487, abs=1e-3)
    lo, hi = m.wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-3)
    assert all(np.isnan(m.wilson_interval(0, 0)))


def test_group_vote_by_mean_probability():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.3, 0.7, 0, 0], [0.1, 0.9, 0, 0], [0.6, 0.4, 0, 0]])
    gt, gp, keys = m.group_vote(y, p, ["a", "a", "a", "b", "b"])
    assert keys == ["a", "b"] and list(gt) == [0, 1]
    assert list(gp) == [1, 1]  # cell a: mean (0.467, 0.533) -> class 1


def reference_ece(probs, y, n_bins=15):
    """Straightforward top-label ECE, written independently of the product code."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return sum(
        abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean()
        for b in range(n_bins)
        if (idx == b).any()
    )


@pytest.mark.parametrize("seed", range(3))
def test_ece_matches_reference_and_bins_sum(seed):
    y, _, p = random_case(seed)
    ece, bins = cal.reliability(p, y)
    assert ece == pytest.approx(reference_ece(p, y))
    assert sum(b.count for b in bins) == len(y)
    # Accuracy in bins, weighted by counts, is the overall accuracy.
    acc = sum(b.accuracy * b.count for b in bins if b.count) / len(y)
    assert acc == pytest.approx((p.argmax(1) == y).mean())


def test_nll_matches_sklearn_log_loss():
    y, logits, p = random_case(0)
    assert cal.nll(logits, y) == pytest.approx(skm.log_loss(y, p, labels=range(N_CLS)))


def test_fitted_temperature_lowers_nll_and_ece_on_overconfident_logits():
    y, logits, _ = random_case(1, n=2000, strength=2.0)
    over = logits * 4.0  # an overconfident network
    t = cal.fit_temperature(over, y)
    assert t > 1.5
    assert cal.nll(over / t, y) < cal.nll(over, y)
    ece_raw, _ = cal.reliability(cal.softmax(over), y)
    ece_cal, _ = cal.reliability(cal.softmax(over / t), y)
    assert ece_cal < ece_raw
    # Temperature never changes the predicted class.
    np.testing.assert_array_equal(cal.softmax(over / t).argmax(1), over.argmax(1))


def test_smoothed_temperature_stays_finite_on_perfectly_separated_labels():
    """80 labels all predicted right: the plain NLL optimum is certainty (T at its floor); Laplace-smoothed
    targets keep the mean confidence near (n + 1) / (n + 2), what 80 correct answers justify."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(N_CLS), 20)
    logits = rng.normal(0, 1, (len(y), N_CLS))
    logits[np.arange(len(y)), y] += 6.0  # every example right, by a wide margin
    assert cal.fit_temperature(logits, y) < 0.06  # at the search floor (0.05)
    s = 1 / (len(y) + 2)
    t = cal.fit_temperature(logits, y, smoothing=s)
    assert t > 0.2
    assert cal.softmax(logits / t).max(1).mean() == pytest.approx(1 - s, abs=0.01)
    # Without smoothing, the same fit as before (a plain NLL minimum).
    y2, lg2, _ = random_case(1, n=500)
    assert cal.fit_temperature(lg2, y2, smoothing=0.0) == pytest.approx(cal.fit_temperature(lg2, y2))


def test_uncalibrate_inverts_temperature():
    _, logits, _ = random_case(2)
    np.testing.assert_allclose(cal.uncalibrate(cal.softmax(logits / 1.7), 1.7), cal.softmax(logits), atol=1e-9)


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_choose_threshold_meets_target_with_fewest_flags(target):
    y, _, p = random_case(3, n=1000, strength=4.0)
    ch = cal.choose_threshold(p, y, target)
    acc, cov = cal.accepted_accuracy(p, y, ch.threshold)
    assert acc >= target and (acc, cov) == pytest.approx((ch.accuracy, ch.coverage))
    # Any lower observed confidence would accept a set below the target.
    conf = p.max(1)
    lower = conf[conf < ch.threshold]
    if len(lower):
        assert cal.accepted_accuracy(p, y, float(lower.max()))[0] < target


def test_choose_threshold_unreachable():
    y = np.array([0, 1])
    p = np.array([[0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0]])
    ch = cal.choose_threshold(p, y, 1.0)
    assert ch.threshold == pytest.approx(0.9) and ch.accuracy == 1.0 and ch.coverage == 0.5
    assert np.isnan(cal.choose_threshold(np.array([[0.9, 0.1, 0, 0]]), np.array([1]), 0.99).accuracy)


@pytest.mark.parametrize("share", [0.0, 0.06, 0.5])
def test_flag_budget_threshold_is_the_highest_that_flags_at_most_the_share(share):
    conf = np.random.default_rng(5).uniform(0.3, 1.0, 500)
    t = cal.flag_budget_threshold(conf, share)
    assert np.mean(conf < t) <= share
    above = conf[conf > t]  # the next higher confidence would flag more than the share
    assert not len(above) or np.mean(conf < above.min()) > share
    assert cal.flag_budget_threshold(np.array([]), 0.1) == 1.0


def test_review_threshold_keeps_the_accuracy_rule_unless_a_source_budget_lowers_it():
    from hematovision.training.recipe import TrainConfig, review_threshold

    y, _, p = random_case(3, n=1000, strength=4.0)
    sources = ["pbc" if k % 3 else "kaggle" for k in range(len(y))]
    plain = cal.choose_threshold(p, y, 0.99)
    loose, capped = review_threshold(p, y, sources, TrainConfig(threshold_flag_budget={"pbc": 0.99}))
    assert capped is None and loose == plain
    tight, capped = review_threshold(p, y, sources, TrainConfig(threshold_flag_budget={"pbc": 0.02}))
    pbc = np.array(sources) == "pbc"
    assert capped == plain.threshold and tight.threshold < plain.threshold
    assert np.mean(p[pbc].max(1) < tight.threshold) <= 0.02
    assert (tight.accuracy, tight.coverage) == pytest.approx(cal.accepted_accuracy(p, y, tight.threshold))


def test_risk_coverage_grid_holds_every_slider_position():
    """The dashboard's slider moves in steps of 0.005: each position from 0.25 is a point of the default grid,
    so "at this threshold" is read at that threshold."""
    y, _, p = random_case(6, n=200)
    grid = {round(q["threshold"], 4) for q in cal.risk_coverage(p, y)}
    assert {round(0.25 + 0.005 * k, 4) for k in range(151)} <= grid


def test_risk_coverage_and_threshold_for_accuracy():
    y, _, p = random_case(4, n=1000, strength=4.0)
    pts = cal.risk_coverage(p, y)
    thr = [q["threshold"] for q in pts]
    assert thr == sorted(thr)
    covs = [q["coverage"] for q in pts]
    assert covs == sorted(covs, reverse=True)
    for q in pts:
        assert q["flagged_share"] == pytest.approx(1 - q["coverage"])
        assert q["coverage"] == pytest.approx((p.max(1) >= q["threshold"]).mean())
    t = cal.threshold_for_accuracy(pts, 0.95)
    ok = [q for q in pts if q["accuracy_accepted"] is not None and q["accuracy_accepted"] >= 0.95]
    assert t == min(q["threshold"] for q in ok)
    assert cal.threshold_for_accuracy(pts, 1.01) is None


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_ece_equals_the_binned_one(seed):
    y, _, p = random_case(seed)
    assert cal.ece_of(p.max(1), p.argmax(1) == y) == pytest.approx(cal.reliability(p, y)[0], abs=1e-12)


def test_ece_floor_shrinks_with_independent_images_and_grows_with_copies():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.55, 1.0, 2400)
    p = np.stack([conf, 1 - conf], axis=1)
    big = cal.ece_floor(p)
    small = cal.ece_floor(p[:70])
    copies = cal.ece_floor(p, groups=[str(i // 30) for i in range(2400)])  # 80 cells of 30 copies
    assert big.median < 0.03 < small.median  # 2,400 independent images vs 70
    assert copies.median > 1.5 * big.median  # copies of few cells measure like fewer images
    assert big.p95 >= big.median and big.n_sims == 500
    assert cal.ece_floor(p, seed=3) == cal.ece_floor(p, seed=3)


def test_cluster_bootstrap_widens_with_copies_and_is_seeded():
    rng = np.random.default_rng(1)
    right = rng.random(80) < 0.8
    stat = lambda i, r=right: float(r[i].mean())  # noqa: E731
    lo, hi = m.cluster_bootstrap(stat, [str(i) for i in range(80)])
    assert lo < right.mean() < hi
    w_lo, w_hi = m.wilson_interval(int(right.sum()), 80)
    assert abs((hi - lo) - (w_hi - w_lo)) < 0.05  # independent images: close to Wilson
    # The same 80 outcomes as 30 copies each: resampling cells gives about the same width,
    # where an image-level interval would pretend to 2,400 independent images.
    many = np.repeat(right, 30)
    c_lo, c_hi = m.cluster_bootstrap(lambda i: float(many[i].mean()), [str(i // 30) for i in range(2400)])
    assert (c_hi - c_lo) > 0.7 * (hi - lo)
    assert m.cluster_bootstrap(stat, [str(i) for i in range(80)], seed=5) == m.cluster_bootstrap(
        stat, [str(i) for i in range(80)], seed=5
    )
    assert m.cluster_bootstrap(lambda i: 1.0, ["a", "b"]) == (1.0, 1.0)

"""Calibration: temperature scaling, expected calibration error, review thresholds.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar fitted
on validation data. It changes confidences, never the predicted class, so it
cannot cost accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The review threshold is shown, applied and written with this many decimals (screen, CLI, flags and CSV alike).
THRESHOLD_DECIMALS = 3


def round_threshold(value: float) -> float:
    """The threshold in force: clipped to [0, 1] and rounded once, so the CLI, the dashboard and every file flag
    the same images (a card's fitted 0.90530 is 0.905 everywhere)."""
    return round(min(max(float(value), 0.0), 1.0), THRESHOLD_DECIMALS)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = softmax(logits)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(logits: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> float:
    """The temperature ``T > 0`` minimising the cross-entropy of ``softmax(logits / T)``.

    ``smoothing`` > 0 fits against targets of ``1 - smoothing`` on the true class (the rest
    spread evenly): for a few perfectly separated examples the plain NLL optimum is ``T -> 0``
    (certainty that n = 80 labels cannot support); with ``smoothing = 1 / (n + 2)``, Laplace's
    rule of succession, the fitted confidence stays near what n correct answers justify.
    """
    from scipy.optimize import minimize_scalar  # scipy.optimize is slow to import; only fitting a temperature needs it

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, int)
    k = logits.shape[1]
    target = np.full(logits.shape, smoothing / max(1, k - 1))
    target[np.arange(len(y)), y] = 1.0 - smoothing

    def loss(lt: float) -> float:  # with smoothing 0 this is exactly :func:`nll`
        logp = np.log(np.clip(softmax(logits / np.exp(lt)), 1e-12, None))
        return float(-(target * logp).sum(axis=1).mean())

    res = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def uncalibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Recover ``softmax(logits)`` from ``softmax(logits / T)`` (exact up to float error)."""
    return softmax(temperature * np.log(np.clip(probs, 1e-30, None)))


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence in the bin (nan if empty)
    accuracy: float  # accuracy in the bin (nan if empty)


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> tuple[float, list[ReliabilityBin]]:
    """Expected calibration error (top-label, equal-width bins) and its bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, ece = [], 0.0
    for k in range(n_bins):
        lo, hi = edges[k], edges[k + 1]
        m = (conf > lo) & (conf <= hi) if k else (conf >= lo) & (conf <= hi)
        n = int(m.sum())
        c = float(conf[m].mean()) if n else float("nan")
        a = float(correct[m].mean()) if n else float("nan")
        if n:
            ece += n / len(y) * abs(a - c)
        bins.append(ReliabilityBin(float(lo), float(hi), n, c, a))
    return float(ece), bins


def ece_of(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE from confidences and right/wrong flags, binned exactly as :func:`reliability`
    (vectorised: the resampling below calls it thousands of times)."""
    if len(conf) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    k = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    gap = np.bincount(k, weights=np.asarray(correct, np.float64) - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(conf))


@dataclass(frozen=True)
class EceFloor:
    """What a perfectly calibrated model would read as ECE on one set (see :func:`ece_floor`)."""

    median: float
    p95: float
    n_sims: int


def ece_floor(
    probs: np.ndarray, groups: list[str] | None = None, n_sims: int = 500, seed: int = 0, n_bins: int = 15
) -> EceFloor:
    """The ECE that sampling noise alone gives a *perfectly calibrated* model with these
    confidences, on a set of this size and grouping.

    Why: ECE is a biased, noisy estimate; on 71 images, or on 2,487 copies of 79 cells, a
    model whose confidences are exactly right still reads several percent. Each simulation
    lets every cell draw one uniform number ``u`` shared by its copies (copies of one cell
    are right or wrong together), and a copy counts as right when ``u`` < its confidence:
    correct with exactly its stated probability. ``groups=None``: every image its own cell.
    """
    conf = np.asarray(probs, np.float64).max(axis=1)
    _, gi = np.unique(
        np.asarray(groups if groups is not None else np.arange(len(conf)).astype(str)), return_inverse=True
    )
    rng = np.random.default_rng(seed)
    sims = (
        np.array([ece_of(conf, rng.random(gi.max() + 1)[gi] < conf, n_bins) for _ in range(n_sims)])
        if len(conf)
        else np.array([np.nan])
    )
    return EceFloor(float(np.median(sims)), float(np.percentile(sims, 95)), n_sims)


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    accuracy: float  # on accepted (confidence >= threshold)
    coverage: float  # share accepted


def accepted_accuracy(probs: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(accuracy on accepted, coverage)`` at a threshold; accuracy is nan when nothing is accepted."""
    conf = probs.max(axis=1)
    acc = conf >= threshold
    cov = float(acc.mean()) if len(y) else 0.0
    a = float((probs.argmax(axis=1)[acc] == y[acc]).mean()) if acc.any() else float("nan")
    return a, cov


def choose_threshold(probs: np.ndarray, y: np.ndarray, target_accuracy: float) -> ThresholdChoice:
    """The lowest confidence threshold whose accepted predictions reach ``target_accuracy``.

    Lowest threshold = fewest flags. Candidates are the observed confidences,
    highest first; the accepted set grows as the threshold falls.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    cum_acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(cum_acc >= target_accuracy)[0]
    if len(ok) == 0:
        return ThresholdChoice(1.0, float("nan"), 0.0)
    k = int(ok.max())
    # Ties: every image with the same confidence as the k-th is accepted too.
    thr = float(conf[order[k]])
    a, cov = accepted_accuracy(probs, y, thr)
    return ThresholdChoice(thr, a, cov)


def flag_budget_threshold(confidences: np.ndarray, max_share: float) -> float:
    """The highest threshold that flags (confidence below it) at most ``max_share`` of these images.

    A review threshold chosen for accuracy alone on a mixed validation set is set by its hardest source;
    this caps it so the clean in-domain images a lab's analyzer produces are not mostly sent to review."""
    conf = np.sort(np.asarray(confidences, dtype=np.float64))
    if not len(conf):
        return 1.0
    k = int(np.floor(max_share * len(conf)))  # at most k images may lie strictly below the threshold
    return float(conf[k]) if k < len(conf) else 1.0


def threshold_for_accuracy(points: list[dict], target: float) -> float | None:
    """From risk-coverage points, the lowest threshold whose accepted accuracy reaches ``target``."""
    ok = [p["threshold"] for p in points if p["accuracy_accepted"] is not None and p["accuracy_accepted"] >= target]
    return min(ok) if ok else None


def risk_coverage(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> list[dict]:
    """Accuracy on accepted predictions and share flagged, over a grid of thresholds: by default every
    threshold the dashboard's slider can take from 0.25 (steps of 0.005), so what it shows "at this
    threshold" is read at that threshold, not at a neighbour; finer above 0.99."""
    if thresholds is None:
        thresholds = np.unique(np.round(
            np.concatenate([np.arange(0.25, 0.99, 0.005), np.arange(0.99, 1.0, 0.001), [1.0]]), 4
        ))
    out = []
    for t in thresholds:
        a, cov = accepted_accuracy(probs, y, float(t))
        out.append(
            {
                "threshold": float(t),
                "coverage": cov,
                "flagged_share": 1 - cov,
                "accuracy_accepted": None if np.isnan(a) else a,
            }
        )
    return out

"""Classification metrics as pure functions of labels and probabilities.

Plain numpy so every figure the product shows can be traced to one line here;
``tests/test_metrics.py`` checks each against scikit-learn on the same inputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the truth or the predictions."""
    pc = per_class(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(pc["f1"][present].mean()) if present.any() else float("nan")


def roc_curve_ovr(y_true: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One-vs-rest ROC of class ``k``: ``(fpr, tpr, auc)``; auc is nan with one class only."""
    pos = np.asarray(y_true) == k
    s = np.asarray(scores)[:, k]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(pos)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200) -> tuple[list[float], list[float]]:
    """Fewer points for storage and plotting, keeping both ends."""
    if len(fpr) <= max_points:
        return [float(v) for v in fpr], [float(v) for v in tpr]
    idx = np.unique(np.r_[np.linspace(0, len(fpr) - 1, max_points).astype(int), len(fpr) - 1])
    return [float(v) for v in fpr[idx]], [float(v) for v in tpr[idx]]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound for small n, unlike the normal one)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def group_vote(y_true: np.ndarray, probs: np.ndarray, groups: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-group (original cell) truth and prediction, voting by mean probability over its copies."""
    acc: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        acc[g].append(i)
    keys = sorted(acc)
    yt = np.array([int(np.asarray(y_true)[acc[g][0]]) for g in keys])
    yp = np.array([int(np.asarray(probs)[acc[g]].mean(axis=0).argmax()) for g in keys])
    return yt, yp, keys


def cluster_bootstrap(
    stat: Callable[[np.ndarray], float], groups: list[str], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of ``stat(indices)`` when whole cells are resampled with replacement.

    Why: copies of one cell are right or wrong together. Kaggle TEST's 2,487 images are
    copies of 79 fields, so an interval that treats the images as independent (Wilson) is
    several times too narrow; resampling cells gives the spread a new set of cells would show.
    """
    _, gi = np.unique(np.asarray(groups), return_inverse=True)
    if len(gi) == 0:
        return (float("nan"), float("nan"))
    order = np.argsort(gi, kind="stable")  # images grouped by cell: cell k is order[start[k]:start[k] + size[k]]
    size = np.bincount(gi)
    start = np.cumsum(size) - size
    rng = np.random.default_rng(seed)

    def resample() -> np.ndarray:
        pick = rng.integers(0, len(size), len(size))
        n = size[pick]
        return order[np.repeat(start[pick] - (np.cumsum(n) - n), n) + np.arange(n.sum())]

    lo, hi = np.percentile([stat(resample()) for _ in range(n_boot)], [2.5, 97.5])
    return (float(lo), float(hi))

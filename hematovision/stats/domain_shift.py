"""Is a whole batch unlike the training data? Compare its unfamiliarity scores with validation's.

At the fitted threshold at most 5% of in-domain validation images are unfamiliar (the trust file
records the exact share, ``p0``; :mod:`hematovision.modeling.unfamiliar`). In a batch of ``n`` images
from a laboratory like ours the count of unfamiliar images is then about Binomial(n, p0); a batch from
elsewhere has many more. The batch is called shifted when

* the one-sided binomial test rejects ``p0`` at :data:`ALPHA`, **and**
* the unfamiliar share is at least :data:`MIN_SHARE` (an effect size: a real shift moves a large
  part of the batch, and in-domain batches are clustered -- copies of one smear field, one
  patient's cells -- so a small excess is not evidence of another laboratory).

Tests on the classifier's outputs and features detect dataset shift reliably (Rabanser et al.,
NeurIPS 2019); this one needs only the per-image verdicts the classifier already computes (their count
and the batch size). Below :data:`MIN_BATCH` images nothing is concluded: the message says so.
The binomial tail is computed here in log space with numpy (this package is numpy only).

A second rule looks at the whole distribution of the batch's unfamiliarity scores, not only its tail: a
stain or camera shift can move every image's score a little without pushing many past the 95th
percentile. Each score's percentile rank among the validation scores (``TrustModel.val_scores``) is 0.5 on
average in-domain; the batch's **mean rank** is the two-sample Mann-Whitney statistic (the AUROC of batch
against validation), with its one-sided p-value from the normal approximation. The batch is called shifted
by this rule when that p-value is below :data:`ALPHA` **and** the mean rank is at least :data:`MIN_RANK` (an
effect size, for the same reasons as :data:`MIN_SHARE`: in-domain batches are clustered and one source's
scores run higher than the validation mix's). A batch is shifted when either rule fires.

When the trust file records the data source of each training-bank image and each validation score, each image
is ranked among the validation scores **of its nearest bank image's source** (one laboratory's batch is compared
with that laboratory's own validation images, not with the mix), and each source's part of the batch (at least
:data:`MIN_BATCH` images) is tested against its own floor (:data:`MIN_RANK_BY_SOURCE`, else :data:`MIN_RANK`).
Without sources the pooled validation scores are the reference, with :data:`MIN_RANK`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: Fewer classified images than this: "too few images to tell".
MIN_BATCH = 20
#: Significance of the one-sided binomial test.
ALPHA = 1e-3
#: Smallest unfamiliar share that counts as a shift, whatever the test says: three times the in-domain 5%, so that
#: a batch a little harder than validation does not fire. Chosen on validation halves and validation-derived
#: stain shifts for hematovision@10dcfb23eb1d (docs/trust.md): 0.25 (the earlier model's) missed the greyscale
#: and rapid-stain proxies (18.5% and 12% unfamiliar) in batches of 200; at 0.15 no in-domain batch fired.
MIN_SHARE = 0.15
#: Smallest mean validation percentile rank of the batch's scores that counts as a shift (0.5 in-domain). Chosen on
#: validation halves (split by cell group) and validation-derived stain/camera shifts for
#: hematovision@10dcfb23eb1d (docs/trust.md, scripts/batch_rule_check.py).
MIN_RANK = 0.90
#: Floors for the source-matched mean rank, per training source: the first round values above every in-domain batch
#: part of at least 50 images drawn from held-out validation against six reference sets (PBC: max 0.641; Kaggle, its
#: fields heterogeneous: 0.821); at 20 images the p-value decides. hematovision@10dcfb23eb1d, docs/trust.md; they still
#: hold for the draw shipped since, hematovision@ca63d8996618 (PBC max 0.641, Kaggle 0.829 at 50 images).
MIN_RANK_BY_SOURCE = {"pbc": 0.65, "kaggle": 0.90}
#: The in-domain share is never taken below this (a threshold calling no validation image unfamiliar).
MIN_EXPECTED = 1e-3


@dataclass(frozen=True)
class DomainShift:
    """``score``: the batch's unfamiliar share; ``threshold``: the smallest share that fires at this ``n``.

    ``rank``: the batch's mean validation percentile rank of its unfamiliarity scores (0.5 in-domain; NaN when
    the scores or the validation scores are not available), ``rank_p_value`` its one-sided p-value and
    ``rank_threshold`` the smallest mean rank that fires; with source-matched references, those of the source part
    of the batch nearest to (or furthest past) its floor, named by ``rank_source``. ``reason``: which rule fired
    (``unfamiliar_share``, ``score_distribution``, both joined by ``+``, or empty).
    """

    detected: bool
    score: float
    threshold: float
    n: int
    message: str
    p_value: float = float("nan")
    expected: float = float("nan")  # share expected in-domain (validation)
    unfamiliar: int = 0
    rank: float = float("nan")
    rank_p_value: float = float("nan")
    rank_threshold: float = float("nan")
    reason: str = ""
    rank_source: str = ""  # the source whose part of the batch the rank is of ("" : the pooled reference)

    def to_dict(self) -> dict:
        """JSON-ready (NaN as ``None``)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def binom_tail(n: int, p: float) -> np.ndarray:
    """``P(X >= x)`` for ``x = 0..n`` under Binomial(n, p) (an array of ``n + 1``)."""
    x = np.arange(n + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    logpmf = lg(n + 1.0) - lg(x + 1.0) - lg(n - x + 1.0) + x * math.log(p) + (n - x) * math.log1p(-p)
    pmf = np.exp(logpmf - logpmf.max()) * math.exp(logpmf.max())
    return np.minimum(1.0, np.cumsum(pmf[::-1])[::-1])


def critical_share(n: int, expected: float, alpha: float = ALPHA, min_share: float = MIN_SHARE) -> float:
    """The smallest unfamiliar share of ``n`` images the rule calls a shift."""
    tail = binom_tail(n, max(float(expected), MIN_EXPECTED))
    below = np.nonzero(tail < alpha)[0]
    x = int(below[0]) if len(below) else n + 1
    return float(max(x / n, min_share))


def mean_rank(scores: np.ndarray, reference: np.ndarray) -> float:
    """Mean percentile rank of ``scores`` among ``reference`` (ties count half): the Mann-Whitney U of the batch
    against the reference divided by ``n * m``. 0.5 when the batch is drawn like the reference; NaN when either
    is empty."""
    s = np.asarray(scores, np.float64)
    ref = np.sort(np.asarray(reference, np.float64))
    if not len(s) or not len(ref):
        return float("nan")
    below = np.searchsorted(ref, s, side="left")
    upto = np.searchsorted(ref, s, side="right")
    return float(np.mean((below + upto) / 2.0) / len(ref))


def rank_p_value(rank: float, n: int, m: int) -> float:
    """One-sided p-value of a mean rank ``rank`` of ``n`` scores against ``m`` reference scores (normal
    approximation to the Mann-Whitney statistic under exchangeability, no tie correction)."""
    if n <= 0 or m <= 0 or math.isnan(rank):
        return float("nan")
    sd = math.sqrt((n + m + 1) / (12.0 * n * m))
    return 0.5 * math.erfc((rank - 0.5) / sd / math.sqrt(2.0))


def _message(detected: bool, x: int, n: int, share: float, p0: float, thr: float, rank: float, by_share: bool,
             by_rank: bool, min_rank: float, matched: bool = False) -> str:
    who = "validation images from the most similar training laboratory" if matched else "validation images"
    if detected:
        if by_share:
            what = f"{x} of {n} images ({share:.0%}) are unfamiliar, against about {p0:.0%} in-domain"
        else:
            what = (
                f"as a whole its images are less familiar than {rank:.0%} of the model's {who} on "
                f"average (about 50% for images like the training data), although only {x} of {n} ({share:.0%}) "
                "are unfamiliar enough to be flagged one by one"
            )
        return (
            f"This batch looks unlike the images the model was trained on: {what}. Expect lower accuracy than the "
            "model card reports, confident predictions included. Review a sample of the batch, and adapt the model "
            "to this laboratory (Model versions page) before relying on it."
        )
    msg = (
        f"No sign that this batch is unlike the training data: {x} of {n} images ({share:.0%}) are unfamiliar "
        f"(about {p0:.0%} expected in-domain; a shift is called from {thr:.0%})"
    )
    if not math.isnan(rank):
        msg += (
            f", and as a whole they are less familiar than {rank:.0%} of the model's {who} on average (about 50% "
            f"in-domain; a shift is called from {min_rank:.0%})"
        )
    return msg + "."


def domain_shift_counts(
    unfamiliar: int,
    n: int,
    expected: float | None,
    *,
    scores: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    reference_sources: np.ndarray | None = None,
    min_batch: int = MIN_BATCH,
    alpha: float = ALPHA,
    min_share: float = MIN_SHARE,
    min_rank: float = MIN_RANK,
) -> DomainShift:
    """The verdict for a batch of ``n`` classified images of which ``unfamiliar`` are unfamiliar.

    ``expected`` is the in-domain unfamiliar share (``TrustModel.expected_share``); ``None`` when the
    model has no fitted trust statistics (nothing is checked). ``scores`` (the batch's unfamiliarity scores,
    non-finite ones ignored) and ``reference`` (the validation scores, ``TrustModel.val_scores``) add the
    score-distribution rule; without either only the unfamiliar share is tested. ``sources`` (each score's nearest
    training source, ``TrustModel.nearest_source``) and ``reference_sources`` (``TrustModel.val_sources``) make
    the reference source-matched.
    """
    n, x = int(n), int(unfamiliar)
    if expected is None:
        return DomainShift(
            False,
            float("nan"),
            float("nan"),
            n,
            "Domain shift not checked: this model has no unfamiliar-cell statistics "
            "(python -m hematovision fit-trust --model DIR).",
            unfamiliar=x,
        )
    share = x / n if n else float("nan")
    if n < min_batch:
        return DomainShift(
            False,
            share,
            float("nan"),
            n,
            f"Too few images to tell whether this batch is unlike the training data ({n} classified; at least "
            f"{min_batch} needed).",
            expected=float(expected),
            unfamiliar=x,
        )
    p0 = max(float(expected), MIN_EXPECTED)
    p = float(binom_tail(n, p0)[x])
    thr = critical_share(n, p0, alpha, min_share)
    by_share = bool(share >= thr and p < alpha)
    s = np.asarray([] if scores is None else scores, np.float64)
    ref = np.asarray([] if reference is None else reference, np.float64)
    src = None if sources is None else np.asarray(sources, dtype=str)
    ref_src = None if reference_sources is None else np.asarray(reference_sources, dtype=str)
    rank, rank_p, rank_thr, rank_src = source_ranks(s, ref, src, ref_src, min_batch, min_rank, alpha)
    by_rank = bool(not math.isnan(rank) and rank >= rank_thr and rank_p < alpha)
    detected = by_share or by_rank
    reason = "+".join(r for r, hit in (("unfamiliar_share", by_share), ("score_distribution", by_rank)) if hit)
    msg = _message(detected, x, n, share, p0, thr, rank, by_share, by_rank, rank_thr, bool(rank_src))
    return DomainShift(detected, share, thr, n, msg, p, p0, x, rank, rank_p, rank_thr, reason, rank_src)


def source_ranks(
    scores: np.ndarray,
    reference: np.ndarray,
    sources: np.ndarray | None,
    reference_sources: np.ndarray | None,
    min_batch: int = MIN_BATCH,
    min_rank: float = MIN_RANK,
    alpha: float = ALPHA,
) -> tuple[float, float, float, str]:
    """``(rank, p_value, floor, source)`` of the batch's scores (non-finite ones dropped).

    Pooled (``source`` empty) without sources: all scores against ``reference`` with floor ``min_rank``. With
    them: each source's part of at least ``min_batch`` images against the reference scores of that source, with
    its floor (:data:`MIN_RANK_BY_SOURCE`, else ``min_rank``); a part that fires (floor reached, p-value under
    ``alpha``) is returned before one that does not, then the one with the largest ``rank - floor``. NaNs when no
    part (or the batch) is large enough or there is no reference.
    """
    nan = float("nan")
    keep = np.isfinite(scores)
    s = scores[keep]
    if len(s) < min_batch or not len(reference):
        return nan, nan, nan, ""
    if sources is None or reference_sources is None or len(sources) != len(scores) or len(
        reference_sources
    ) != len(reference):
        rank = mean_rank(s, reference)
        return rank, rank_p_value(rank, len(s), len(reference)), float(min_rank), ""
    src = sources[keep]
    best, best_key = (nan, nan, nan, ""), None
    for name in sorted(set(src.tolist())):
        part = s[src == name]
        ref = reference[reference_sources == name]
        if len(part) < min_batch or not len(ref):
            continue
        rank = mean_rank(part, ref)
        floor = float(MIN_RANK_BY_SOURCE.get(name, min_rank))
        p = rank_p_value(rank, len(part), len(ref))
        key = (rank >= floor and p < alpha, rank - floor)
        if best_key is None or key > best_key:
            best, best_key = (rank, p, floor, name), key
    return best


def domain_shift(
    unfamiliar: np.ndarray | list[bool],
    expected: float | None,
    *,
    scores: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    reference_sources: np.ndarray | None = None,
    min_batch: int = MIN_BATCH,
    alpha: float = ALPHA,
    min_share: float = MIN_SHARE,
    min_rank: float = MIN_RANK,
) -> DomainShift:
    """The verdict for a batch from its images' unfamiliar flags (error rows left out by the caller), and
    optionally their unfamiliarity ``scores`` against the validation ``reference`` scores."""
    flags = np.asarray(unfamiliar, bool)
    return domain_shift_counts(
        int(flags.sum()),
        int(flags.size),
        expected,
        scores=scores,
        reference=reference,
        sources=sources,
        reference_sources=reference_sources,
        min_batch=min_batch,
        alpha=alpha,
        min_share=min_share,
        min_rank=min_rank,
    )

"""Is a whole batch unlike the training data? Compare its share of unfamiliar images with validation's.

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
#: The in-domain share is never taken below this (a threshold calling no validation image unfamiliar).
MIN_EXPECTED = 1e-3


@dataclass(frozen=True)
class DomainShift:
    """``score``: the batch's unfamiliar share; ``threshold``: the smallest share that fires at this ``n``."""

    detected: bool
    score: float
    threshold: float
    n: int
    message: str
    p_value: float = float("nan")
    expected: float = float("nan")  # share expected in-domain (validation)
    unfamiliar: int = 0

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


def domain_shift_counts(
    unfamiliar: int,
    n: int,
    expected: float | None,
    *,
    min_batch: int = MIN_BATCH,
    alpha: float = ALPHA,
    min_share: float = MIN_SHARE,
) -> DomainShift:
    """The verdict for a batch of ``n`` classified images of which ``unfamiliar`` are unfamiliar.

    ``expected`` is the in-domain unfamiliar share (``TrustModel.expected_share``); ``None`` when the
    model has no fitted trust statistics (nothing is checked).
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
    detected = bool(share >= thr and p < alpha)
    if detected:
        msg = (
            f"This batch looks unlike the images the model was trained on: {x} of {n} images ({share:.0%}) are "
            f"unfamiliar, against about {p0:.0%} in-domain. Expect lower accuracy than the model card reports, also "
            "on the images not flagged. Review a sample of the batch, and adapt the model to this laboratory "
            "(Model versions page) before relying on it."
        )
    else:
        msg = (
            f"No sign that this batch is unlike the training data: {x} of {n} images ({share:.0%}) are unfamiliar "
            f"(about {p0:.0%} expected in-domain; a shift is called from {thr:.0%})."
        )
    return DomainShift(detected, share, thr, n, msg, p, p0, x)


def domain_shift(
    unfamiliar: np.ndarray | list[bool],
    expected: float | None,
    *,
    min_batch: int = MIN_BATCH,
    alpha: float = ALPHA,
    min_share: float = MIN_SHARE,
) -> DomainShift:
    """The verdict for a batch from its images' unfamiliar flags (error rows left out by the caller)."""
    flags = np.asarray(unfamiliar, bool)
    return domain_shift_counts(
        int(flags.sum()), int(flags.size), expected, min_batch=min_batch, alpha=alpha, min_share=min_share
    )

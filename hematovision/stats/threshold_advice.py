"""Which review threshold a test set supports for a target accuracy, and when it supports none.

The lowest threshold whose *observed* accuracy on accepted images reaches the target is a
poor choice on a small set: 20 images all right say "100%", yet the 95% interval reaches
down to 84%, and a threshold that flags everything is "100% accurate" on nothing. So a
threshold is only proposed where

* the **95% Wilson lower bound** of the accuracy on accepted images reaches the target,
* at least :data:`MIN_ACCEPTED` independent images are accepted, and
* no more than :data:`MAX_FLAGGED` of the set is flagged,

counting *independent* images: where a set holds augmented copies of few cells (Kaggle TEST),
each cell counts once. Otherwise the advice says plainly that the set cannot choose one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .metrics import wilson_interval

MIN_ACCEPTED = 30
MAX_FLAGGED = 0.9
Z95 = 1.959964


@dataclass(frozen=True)
class Advice:
    """A proposed threshold (``None`` when the set supports none) and what to tell the user."""

    threshold: float | None
    message: str
    accuracy: float | None = None  # observed, on accepted images, at the threshold
    lower_bound: float | None = None  # 95% Wilson lower bound of that accuracy
    accepted: int = 0  # independent images (or cells) accepted
    flagged_share: float | None = None


def needed_for(target: float, z: float = Z95) -> int:
    """Accepted images, all correct, whose Wilson lower bound reaches ``target`` (``n / (n + z²) ≥ target``)."""
    if target >= 1.0:
        return math.inf  # type: ignore[return-value]
    return math.ceil(z * z * target / (1.0 - target))


def advise(
    points: list[dict],
    n_images: int,
    target: float,
    n_independent: int | None = None,
    unit: str = "images",
    min_accepted: int = MIN_ACCEPTED,
    max_flagged: float = MAX_FLAGGED,
) -> Advice:
    """The lowest grid threshold that meets ``target`` by its lower bound (see the module docstring).

    ``points``: the set's risk-coverage grid (``threshold``, ``coverage``, ``flagged_share``,
    ``accuracy_accepted``); ``n_independent``: independent images (cells) behind the ``n_images``.
    """
    n = int(n_independent or n_images or 0)
    need = max(needed_for(target), min_accepted)
    for p in sorted(points, key=lambda q: q["threshold"]):
        acc = p.get("accuracy_accepted")
        if acc is None or p["flagged_share"] > max_flagged:
            continue
        k = int(round(p["coverage"] * n))
        if k < min_accepted:
            continue
        lo = wilson_interval(int(round(acc * k)), k)[0]
        if lo >= target:
            return Advice(
                float(p["threshold"]),
                (
                    f"Lowest threshold whose accuracy on accepted {unit} is at least {target:.1%} with 95% confidence: "
                    f"**{p['threshold']:.3f}** — {acc:.2%} observed, 95% lower bound {lo:.2%}, on {k} accepted {unit}; "
                    f"{p['flagged_share']:.1%} flagged."
                ),
                acc,
                lo,
                k,
                p["flagged_share"],
            )
    if n < need:
        best = n / (n + Z95 * Z95) if n else 0.0
        return Advice(
            None,
            (
                f"This set is too small to choose a threshold for {target:.1%}: it has {n} independent {unit}, and "
                f"even if every accepted one were right, {n} would only show at least {best:.1%} with 95% confidence. "
                f"That takes about {need} accepted {unit}. Keep the model's default threshold, or evaluate a larger "
                "labeled set."
            ),
        )
    return Advice(
        None,
        (
            f"No threshold on this set shows {target:.1%} accuracy on accepted {unit} with 95% confidence while "
            f"flagging at most {max_flagged:.0%} of them. Choose a lower target, or keep the model's default threshold."
        ),
    )

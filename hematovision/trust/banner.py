"""What the dashboard shows about trust: the batch's domain-shift verdict and the banner's words."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..reports.tables import NEAR_SOURCE, unfamiliar_of
from ..stats.domain_shift import DomainShift, domain_shift


def frame_shift(frame: pd.DataFrame, trust) -> DomainShift:
    """The domain-shift verdict for a results table (error rows left out); ``trust``: the classifier's
    :class:`~hematovision.modeling.unfamiliar.TrustModel` or ``None``."""
    ok = frame["error"].fillna("") == ""
    flags = unfamiliar_of(frame)[ok]
    scores = sources = None
    if trust is not None and "unfamiliarity" in frame.columns:
        scores = pd.to_numeric(frame.loc[ok, "unfamiliarity"], errors="coerce").to_numpy(float)
        if NEAR_SOURCE in frame.columns and getattr(trust, "val_sources", None) is not None:
            near = frame.loc[ok, NEAR_SOURCE].fillna("").astype(str).to_numpy()
            sources = near if all(near[np.isfinite(scores)]) else None
    return domain_shift(
        flags.to_numpy(),
        None if trust is None else trust.expected_share,
        scores=scores,
        reference=None if trust is None else trust.val_scores,
        sources=sources,
        reference_sources=None if sources is None else trust.val_sources,
    )


def banner_text(shift: DomainShift, held: bool = False) -> str:
    """Markdown for the Classify page's warning when ``shift.detected``: what it means, what to do; ``held``: the
    batch's predictions are all flagged for review (the batch hold), and the banner says so."""
    unf = round(shift.score * shift.n)
    what = (
        f"{unf} of {shift.n} images ({shift.score:.0%}) are unfamiliar, against about {shift.expected:.0%} for images "
        "like the training data."
    )
    if "unfamiliar_share" not in shift.reason:  # called on the scores' distribution: few are unfamiliar one by one
        what = (
            f"As a whole, its images are less familiar than {shift.rank:.0%} of the model's validation images "
            + ("from the most similar training laboratory " if shift.rank_source else "")
            + "on average"
            + f" (about 50% for images like the training data), although only {unf} of {shift.n} "
            f"({shift.score:.0%}) are unfamiliar enough to be flagged one by one."
        )
    hold = (
        "**Held for review:** every prediction in this batch is flagged, the confident ones too (reason `batch_shift` "
        "in the CSV), as a failed quality control holds an analyzer's results; the differential is provisional.\n\n"
        if held
        else ""
    )
    return (
        f"**This batch looks unlike the images the model was trained on.** {what}\n\n"
        "**What it means:** expect lower accuracy than the model card reports on this batch, confident predictions "
        "included; another laboratory's stain, camera or crop typically does this. Unfamiliar cells are left out of "
        "the differential (counted as *Unidentified*).\n\n"
        f"{hold}"
        "**What to do:** review a sample of the batch (about 20 cells per class) on the Review page, then build a "
        "version adapted to your laboratory from those reviews on the **Model versions** page, and classify the "
        "batch again with it."
    )

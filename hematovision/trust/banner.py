"""What the dashboard shows about trust: the batch's domain-shift verdict and the banner's words."""

from __future__ import annotations

import pandas as pd

from ..reports.tables import unfamiliar_of
from ..stats.domain_shift import DomainShift, domain_shift


def frame_shift(frame: pd.DataFrame, trust) -> DomainShift:
    """The domain-shift verdict for a results table (error rows left out); ``trust``: the classifier's
    :class:`~hematovision.modeling.unfamiliar.TrustModel` or ``None``."""
    ok = frame["error"].fillna("") == ""
    flags = unfamiliar_of(frame)[ok]
    return domain_shift(flags.to_numpy(), None if trust is None else trust.expected_share)


def banner_text(shift: DomainShift) -> str:
    """Markdown for the Classify page's warning when ``shift.detected``: what it means, what to do."""
    unf = round(shift.score * shift.n)
    return (
        f"**This batch looks unlike the images the model was trained on.** {unf} of {shift.n} images "
        f"({shift.score:.0%}) are unfamiliar, against about {shift.expected:.0%} for images like the training data.\n\n"
        "**What it means:** expect lower accuracy than the model card reports on this batch, also among the "
        "predictions that are not flagged; another laboratory's stain, camera or crop typically does this. "
        "Unfamiliar cells are left out of the differential (counted as *Unidentified*).\n\n"
        "**What to do:** review a sample of the batch (about 20 cells per class) on the Review page, then build a "
        "version adapted to your laboratory from those reviews on the **Model versions** page, and classify the "
        "batch again with it."
    )

"""How the dashboard shows things: one rounding for the threshold, short names, status marks, readable times.

Pure functions (no Streamlit), shared by the pages and tested on their own, so the
screen, the CSV and the tests cannot disagree about a number or a name.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

import pandas as pd

from ..stats import THRESHOLD_DECIMALS, round_threshold

FLAGGED_MARK = "⚠️ review"
ACCEPTED_MARK = "✓ accepted"
ERROR_MARK = "✗ error"
REVIEWED_MARK = "🧑‍🔬 reviewed"

#: The "Unidentified" count's help, in both modes of the Classify page.
UNIDENTIFIED_HELP = (
    "Unfamiliar cells: unlike the training images (not a white cell, or another laboratory's stain or camera). Left "
    "out of the differential until a person classifies them (they are on the review list). White cells of other types "
    "(basophils, blasts, immature granulocytes) are often not caught: check the slide."
)


def threshold_choice_text(record: dict) -> str:
    """How the model's default threshold was chosen, from the card's ``threshold`` record (empty if unknown)."""
    target = record.get("target_accuracy")
    if target is None:
        return ""
    text = (f"The default threshold was chosen on validation data to reach about {target:.0%} accuracy on accepted "
            "images")
    budget, capped = record.get("flag_budget") or {}, record.get("capped_from")
    if capped is not None and budget:
        shares = ", ".join(f"{share:.0%} of {source.upper()} validation images" for source, share in budget.items())
        text += (f" ({threshold_text(capped)}), then lowered so that at most {shares} are flagged; accepted "
                 f"validation predictions are {record.get('val_accuracy_accepted', float('nan')):.1%} right")
    return text + "."


def threshold_text(value: float) -> str:
    return f"{round_threshold(value):.{THRESHOLD_DECIMALS}f}"


def short_name(name: str, parts: int = 2) -> str:
    """The last ``parts`` path components of a file or zip-member name (``EOSINOPHIL/_0_1616.jpeg``)."""
    p = PurePosixPath(str(name).replace("\\", "/"))
    tail = p.parts[-parts:] if len(p.parts) > parts else p.parts
    return "/".join(tail) if tail else str(name)


def status_marks(frame: pd.DataFrame) -> list[str]:
    """A leading status per results row: error, reviewed, flagged for review, or accepted."""
    err = frame["error"].fillna("") != ""
    reviewed = (
        frame["reviewed_class"].fillna("") != ""
        if "reviewed_class" in frame.columns
        else pd.Series(False, index=frame.index)
    )
    flagged = frame["flagged"].astype(bool)
    out = []
    for e, r, f in zip(err, reviewed, flagged):
        out.append(ERROR_MARK if e else REVIEWED_MARK if r else FLAGGED_MARK if f else ACCEPTED_MARK)
    return out


def local_time(utc_iso: str, tz: str | None) -> str:
    """``2026-11-29T20:01:33Z`` as ``29 Nov 2026, 21:01`` in the viewer's time zone (UTC when unknown)."""
    if not utc_iso:
        return ""
    try:
        t = _dt.datetime.fromisoformat(str(utc_iso).replace("Z", "+00:00"))
    except ValueError:
        return str(utc_iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    try:
        zone = ZoneInfo(tz) if tz else _dt.UTC
    except Exception:  # an unknown zone name from the browser: say UTC rather than fail
        zone, tz = _dt.UTC, None
    t = t.astimezone(zone)
    return f"{t.day} {t:%b %Y, %H:%M}" + ("" if tz else " UTC")


def or_dash(value, fmt: str = "{}") -> str:
    """A table cell: the formatted value, or an en dash where there is none (never a raw ``None``)."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return fmt.format(value)


def versions_rows(versions: Sequence, cards: Sequence, current: str, tz: str | None = None) -> pd.DataFrame:
    """The Model versions table: text cells, dashes for what does not apply, readable local creation times."""
    rows = []
    for v, card in zip(versions, cards):
        ad = card.training.get("adaptation", {}) if card is not None else {}
        rows.append(
            {
                "in use": str(v.path) == str(current),
                "version": v.version,
                "kind": "shipped" if v.shipped else "adapted",
                "adapted from": v.parent or "–",
                "labeled images": or_dash(sum(ad.get("labeled_counts", {}).values()) if ad else None),
                "cross-fitted accuracy": or_dash(ad.get("crossfit_accuracy") if ad else None, "{:.1%}"),
                "default threshold": threshold_text(card.default_threshold) if card is not None else "–",
                "created": local_time(v.created, tz) or "–",
                "folder": str(v.path),
            }
        )
    return pd.DataFrame(rows)


def ece_worse_note(sets: dict) -> str:
    """One sentence for the sets whose calibration error is higher after temperature scaling ("" when none)."""
    worse = [
        s
        for s in sets.values()
        if s.get("ece_before_calibration") is not None
        and s.get("ece_after_calibration") is not None
        and s["ece_after_calibration"] > s["ece_before_calibration"]
    ]
    if not worse:
        return ""
    parts = []
    for s in worse:
        floor = (s.get("ece_floor") or {}).get("median")
        parts.append(
            f"{s.get('name', '?')} {s['ece_before_calibration']:.3f} → {s['ece_after_calibration']:.3f}"
            + (f" (noise floor {floor:.3f})" if floor is not None else "")
        )
    return (
        "Why calibration error can be higher after temperature scaling ("
        + "; ".join(parts)
        + "): the one temperature is fitted on the validation images, so it corrects the model's over- or "
        "under-confidence as it was there; a test set from another source, made of few distinct cells, can need a "
        "different correction, and a difference of this size is within what its small number of cells can measure "
        "(the noise floor)."
    )

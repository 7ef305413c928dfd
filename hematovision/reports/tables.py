"""Results tables and CSV reports, shared by the CLI and the dashboard.

File names come from users, so every text cell that a spreadsheet could read
as a formula (leading ``=``, ``+``, ``-``, ``@``, tab or carriage return) is
prefixed with a quote (OWASP's advice against CSV injection).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from ..serving.classifier import BATCH_SHIFT, Prediction, flag_reason

BASE_COLUMNS = ["file", "predicted_class", "confidence"]
TAIL_COLUMNS = ["flagged", "error"]
#: A person's decision beside the machine's: ``final_class`` is the reviewed class where there is
#: one (``unusable`` included), else the prediction; error rows have none.
REVIEW_COLUMNS = ["reviewed_class", "reviewer", "reviewed_at", "final_class"]
#: The decision for "not a white cell / unusable image": a value of ``reviewed_class`` (the review store's
#: too: defined here, below it, so that the report reads it without importing the store).
UNUSABLE = "unusable"
#: After every other column (issue 19): ``unfamiliar`` (true/false; false when the model has no trust.npz),
#: ``flag_reason`` (``unfamiliar``, ``low_confidence`` or empty) and ``unfamiliarity`` (the score; empty without).
TRUST_COLUMNS = ["unfamiliar", "flag_reason", "unfamiliarity"]
#: In the dashboard's results frame only (not in the CSV): each image's nearest training source, for the batch rule.
NEAR_SOURCE = "near_source"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def columns(classes: Sequence[str]) -> list[str]:
    return BASE_COLUMNS + [f"p_{c}" for c in classes] + TAIL_COLUMNS


def predictions_frame(preds: Iterable[Prediction], classes: Sequence[str]) -> pd.DataFrame:
    """One row per prediction, in order, with the CLI's CSV columns plus ``sha256`` and ``note``."""
    rows = []
    for p in preds:
        row = {"file": p.file, "predicted_class": p.predicted_class, "confidence": p.confidence}
        for k, c in enumerate(classes):
            row[f"p_{c}"] = p.probabilities[k] if p.probabilities else float("nan")
        row.update(flagged=p.flagged, error=p.error, sha256=p.sha256, note=p.note)
        row.update(trust_values(p))
        row[NEAR_SOURCE] = p.near_source
        rows.append(row)
    return pd.DataFrame(rows, columns=columns(classes) + ["sha256", "note"] + TRUST_COLUMNS + [NEAR_SOURCE])


def trust_values(p: Prediction) -> dict:
    """A prediction's :data:`TRUST_COLUMNS` (the score ``nan`` without trust statistics or for an error)."""
    return {"unfamiliar": p.unfamiliar, "flag_reason": p.flag_reason, "unfamiliarity": p.unfamiliarity}


def trust_cells(p: Prediction) -> list:
    """:data:`TRUST_COLUMNS` as CSV text: ``True``/``False``, the reason, the score to 4 decimals or empty."""
    score = "" if not p.ok or p.unfamiliarity != p.unfamiliarity else f"{p.unfamiliarity:.4f}"
    return [p.unfamiliar, p.flag_reason, score]


def unfamiliar_of(frame: pd.DataFrame) -> pd.Series:
    """``unfamiliar`` as booleans (false where the frame has no such column, and for error rows)."""
    ok = frame["error"].fillna("") == ""
    if "unfamiliar" not in frame.columns:
        return pd.Series(False, index=frame.index)
    col = frame["unfamiliar"]
    if col.dtype == object or pd.api.types.is_string_dtype(col):  # read back from a CSV: "True" / "False"
        col = col.astype(str).str.lower().isin(["true", "1"])
    return ok & col.fillna(False).astype(bool)


def with_reviews(frame: pd.DataFrame, reviews: Mapping[str, object]) -> pd.DataFrame:
    """Add :data:`REVIEW_COLUMNS` from decisions by sha256 (objects with ``reviewed_class``,
    ``reviewer``, ``reviewed_at``; the caller picks those of the frame's model version)."""
    out = frame.copy()
    found = [reviews.get(sha) if sha else None for sha in out["sha256"].fillna("")]
    out["reviewed_class"] = [d.reviewed_class if d is not None else "" for d in found]
    out["reviewer"] = [d.reviewer if d is not None else "" for d in found]
    out["reviewed_at"] = [d.reviewed_at if d is not None else "" for d in found]
    is_err = out["error"].fillna("") != ""
    pred = out["predicted_class"].fillna("").astype(str)
    out["final_class"] = [("" if e else (r or p)) for e, r, p in zip(is_err, out["reviewed_class"], pred)]
    return out


def ensure_review_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with :data:`REVIEW_COLUMNS`, unreviewed where it had none."""
    return frame if all(c in frame.columns for c in REVIEW_COLUMNS) else with_reviews(frame, {})


def apply_threshold(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Recompute ``flagged`` (and ``flag_reason``) for a new threshold: no inference needed. An unfamiliar
    image stays flagged whatever the threshold."""
    out = frame.copy()
    odd = unfamiliar_of(out)
    out["flagged"] = (out["error"].fillna("") == "") & ((out["confidence"] < threshold) | odd)
    if "flag_reason" in out.columns:
        out["flag_reason"] = [flag_reason(bool(f), bool(u)) for f, u in zip(out["flagged"], odd)]
    return out


def hold_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The batch hold on a results table (see ``serving.classifier.BATCH_SHIFT``): every classified
    row not yet flagged becomes flagged, ``flag_reason`` ``batch_shift``. Error rows and rows without a class (a
    field without a white cell) stay as they are."""
    out = frame.copy()
    ok = (out["error"].fillna("") == "") & (out["predicted_class"].fillna("").astype(str) != "")
    flagged = out["flagged"].fillna(False).astype(bool)
    new = ok & ~flagged
    out["flagged"] = flagged | new
    if "flag_reason" in out.columns:
        out.loc[new, "flag_reason"] = BATCH_SHIFT
    return out


def neutralise(value):
    """Make a text cell safe to open in a spreadsheet. A number written as text (``-0.0071``, a negative
    unfamiliarity score) is a number to a spreadsheet too, not a formula: left as it is."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text  # a leading tab or carriage return is never left alone


def to_csv(frame: pd.DataFrame, path=None, **extra_columns) -> str | None:
    """Write a report; ``extra_columns`` (e.g. threshold, model_version) are added to every row."""
    out = frame.copy()
    for k, v in extra_columns.items():
        out[k] = v
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(neutralise)
    return out.to_csv(path, index=False, float_format="%.6f")

"""The Classify page's results: review decisions joined in, the table's columns, the figures, a review saved
from the detail view. The page lays them out; what is decided here is tested without a browser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
import plotly.express as px
import streamlit as st

from ..reports import tables as report
from ..review import store as review
from ..serving.classifier import Prediction
from . import display, samples
from . import state as app_state


def with_decisions(frame: pd.DataFrame, store, model_version: str) -> tuple[pd.DataFrame, dict]:
    """``frame`` with the review columns from the store's current decisions for this model version
    (none without a store) and the model version of every row; and those decisions by sha256."""
    decisions = {sha: d for (sha, _), d in store.current(model_version).items()} if store is not None else {}
    frame = report.with_reviews(frame, decisions)
    frame["model_version"] = model_version  # which model version made each prediction (sidebar picker)
    return frame, decisions


def table_columns(classes: list[str]) -> tuple[dict, list[str]]:
    """Column configuration and order of the results table (the rows from :func:`table_rows`): a leading
    status, the framed cell, a short name, then the prediction; the full path and the model version last."""
    col_cfg = {
        "status": st.column_config.TextColumn(
            "Status",
            width="small",
            help="⚠️ flagged for review (confidence below the threshold, unfamiliar, or held with a batch that looks "
                 "unlike the training images), ✓ accepted, 🧑‍🔬 reviewed by a person, ✗ could not be read",
        ),
        "thumbnail": st.column_config.ImageColumn("Cell", width="small", help="What the network saw: the framed cell"),
        "name": st.column_config.TextColumn(
            "File",
            width="medium",
            help="The end of the file name; the full name is in the CSV and the File path column",
        ),
        "predicted_class": st.column_config.TextColumn("Predicted class"),
        "confidence": st.column_config.NumberColumn("Confidence", format="%.3f"),
        "flagged": st.column_config.CheckboxColumn("Flagged", width="small"),
        "error": st.column_config.TextColumn("Error"),
        "final_class": st.column_config.TextColumn(
            "Final class", help="The reviewed class where there is one, else the prediction"
        ),
        "reviewed_class": st.column_config.TextColumn("Reviewed as"),
        "reviewer": st.column_config.TextColumn("Reviewer"),
        "reviewed_at": st.column_config.TextColumn("Reviewed at", help="In your browser's time zone"),
        "file": st.column_config.TextColumn("File path"),
        "model_version": st.column_config.TextColumn(
            "Model version", help="The model version that made the prediction (Model versions page)"
        ),
    }
    col_cfg.update({f"p_{c}": st.column_config.NumberColumn(f"p({c})", format="%.3f") for c in classes})
    order = ["status", "thumbnail", "name", "predicted_class", "confidence", "flagged", "final_class",
             *[f"p_{c}" for c in classes], "reviewed_class", "reviewer", "reviewed_at", "error", "file",
             "model_version"]
    return col_cfg, order


def table_rows(view: pd.DataFrame, tz: str | None) -> pd.DataFrame:
    """The rows as the table shows them: a leading status mark, the file's short name, and review times in the
    viewer's time zone ``tz`` (UTC when unknown); the other columns as they are."""
    return view.assign(
        status=display.status_marks(view),
        name=[display.short_name(f) for f in view["file"]],
        reviewed_at=[display.local_time(t, tz) for t in view["reviewed_at"]],
    )


def differential_columns() -> dict:
    """The differential table's columns, narrow enough for an 800 px window with the sidebar open."""
    return {
        "class": st.column_config.TextColumn("Class"),
        "count": st.column_config.NumberColumn("Count", width="small"),
        "percent": st.column_config.NumberColumn("Percent", format="%.1f%%", width="small"),
    }


def differential_figure(differential: pd.DataFrame):
    """Bar chart of the differential (final classes)."""
    fig = px.bar(differential, x="class", y="count", text="count", title="Differential (final classes)")
    fig.update_layout(height=300, margin=dict(t=40, b=10))
    return fig


def probability_figure(frame: pd.DataFrame, row, classes: list[str]):
    """Horizontal bars of one row's class probabilities, titled with its prediction."""
    probs = [{"class": c, "probability": float(frame.at[row, f"p_{c}"])} for c in classes]
    fig = px.bar(probs, x="probability", y="class", orientation="h", range_x=[0, 1], text_auto=".3f",
                 title=f"Predicted: {frame.at[row, 'predicted_class']} ({frame.at[row, 'confidence']:.3f})")
    fig.update_layout(height=300, margin=dict(t=40, b=10))
    return fig


def save_review(store, prediction: Prediction, data: bytes | None, flagged: bool, classes: list[str],
                model_version: str, threshold: float, verdict: str, reviewer: str, note: str, *,
                batch: str = "") -> None:
    """A decision made in the detail view, flagged or not: the prediction is queued first (with its image,
    once, named by its ``batch``), then the decision is recorded."""
    p = replace(prediction, flagged=bool(flagged))
    review.queue_with_images(store, [(p, data or b"")], classes, model_version, threshold, batch=batch)
    store.decide(p.sha256, model_version, verdict, reviewer, note)


def send_to_review(store, prediction: Prediction, data: bytes | None, flagged: bool, classes: list[str],
                   model_version: str, threshold: float, *, batch: str = "") -> int:
    """Put one image on the review list on purpose, whatever its confidence (the detail view's button)."""
    p = replace(prediction, flagged=bool(flagged))
    return review.queue_with_images(store, [(p, data or b"")], classes, model_version, threshold, batch=batch,
                                    sent=True)


def on_review_list(store, sha256: str, model_version: str, threshold: float) -> bool:
    """Whether the image is on the Review page's list at ``threshold`` (flagged there, or sent on purpose)."""
    item = next((it for it in store.items(model_version) if it.sha256 == sha256), None)
    return item is not None and item.in_queue(threshold)


def load_samples(batch, root) -> str:
    """Put the sample images into the session's ``batch``; what to tell the user about missing ones ("" if none)."""
    found, missing = samples.load_samples()
    if found:
        batch.set_samples(found)
    return missing_samples_note(len(found), len(missing), root)


def detail_images(clf, sha256: str, rgb, name: str, gradcam: bool) -> tuple[list, list[str], str]:
    """The detail view's pictures and captions: the image, and its Grad-CAM overlay when asked for; a warning
    instead of the overlay when it cannot be computed (a heat map is a help, never a reason to lose the page)."""
    shown, captions = [rgb], [name]
    if gradcam:
        try:
            over, explained = app_state.gradcam_overlay(clf, sha256, "original", rgb)
        except Exception as exc:
            return shown, captions, f"Grad-CAM unavailable ({type(exc).__name__}: {exc})."
        shown.append(over)
        captions.append(f"Grad-CAM for '{explained}'")
    return shown, captions, ""


def missing_samples_note(found: int, missing: int, root) -> str:
    """What to tell the user when sample images are missing from the data root ("" when none are)."""
    if not missing:
        return ""
    return f"{missing} of {missing + found} sample images are missing. " + samples.HOW_TO_GET_DATA.format(root=root)


def send_sample_to_review(store, sample: Sequence[tuple[Prediction, bytes]], classes: list[str],
                          model_version: str, threshold: float, *, batch: str = "") -> int:
    """Put the banner's balanced sample (``batching.review_sample``) on the review list on purpose, named by
    its batch (the Review page's batch filter shows it): how many were queued."""
    if not sample:
        return 0
    return review.queue_with_images(store, list(sample), classes, model_version, threshold, batch=batch, sent=True)

"""Figures and tables for the evaluation page, built from an evaluation report dict.

Pure functions (no Streamlit) so each one can be tested on its own, and so every
number the page shows is read from the report rather than recomputed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from ..data.datasets import TEST_SETS

GALLERY_CAP = 24


def classes_of(set_report: dict) -> list[str]:
    """Class order of a set, as stored in its per-class table (JSON keeps insertion order)."""
    return list(set_report.get("per_class", {}).keys())


def set_options(report: dict | None, user_sets: dict | None = None) -> dict[str, str]:
    """``{key: label}`` for the set selector: shipped test sets first, then this session's uploads."""
    out: dict[str, str] = {}
    sets = (report or {}).get("sets", {})
    for key in list(TEST_SETS) + [k for k in sets if k not in TEST_SETS]:
        if key in sets and sets[key].get("n_images"):
            out[key] = sets[key].get("name") or TEST_SETS.get(key, key)
    for key, entry in (user_sets or {}).items():
        out[key] = f"{entry['report'].get('name') or key} (uploaded)"
    return out


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}%}"


def headline(set_report: dict) -> list[dict]:
    """The headline figures as ``{label, value, help}`` rows, for ``st.metric``."""
    ci = set_report.get("accuracy_ci95") or [None, None]
    ci_text = f"95% CI {_pct(ci[0])} – {_pct(ci[1])}" if None not in ci else "95% CI n/a"
    f1 = set_report.get("macro_f1")
    before, after = set_report.get("ece_before_calibration"), set_report.get("ece_after_calibration")
    return [
        {
            "label": "Accuracy",
            "value": _pct(set_report.get("accuracy")),
            "help": f"{ci_text} (Wilson score interval)",
            "caption": ci_text,
        },
        {
            "label": "Macro-F1",
            "value": "n/a" if f1 is None else f"{f1:.3f}",
            "help": "Mean F1 over the classes, each class counted equally.",
            "caption": "",
        },
        {
            "label": "Images",
            "value": f"{set_report.get('n_images', 0):,}",
            "help": "Images evaluated in this set.",
            "caption": "",
        },
        {
            "label": "ECE after calibration",
            "value": "n/a" if after is None else f"{after:.3f}",
            "help": "Expected calibration error (15 bins): the mean gap between confidence and accuracy. Lower is "
                    "better. "
            + ece_resolution(set_report),
            "caption": "before calibration: "
            + ("n/a" if before is None else f"{before:.3f}")
            + _floor_text(set_report),
        },
    ]


def _floor_text(set_report: dict) -> str:
    floor = (set_report.get("ece_floor") or {}).get("median")
    return "" if floor is None else f" · noise floor: {floor:.3f}"


def ece_resolution(set_report: dict) -> str:
    """How finely this set can measure ECE: its interval (resampling cells) and the noise floor a perfectly
    calibrated model would read here. Empty for reports written before these were recorded."""
    parts = []
    ci, floor = set_report.get("ece_after_calibration_ci95"), set_report.get("ece_floor")
    if ci and None not in ci:
        parts.append(f"95% CI {ci[0]:.3f} – {ci[1]:.3f}, resampling cells.")
    if floor and floor.get("median") is not None:
        parts.append(
            f"A perfectly calibrated model with these confidences would read about {floor['median']:.3f} on this set "
            f"(95th percentile {floor['p95']:.3f}) from sampling noise alone."
        )
    return " ".join(parts)


def confusion_figure(set_report: dict, normalise: bool = False) -> go.Figure:
    """Heatmap of the confusion matrix (rows = true class); ``normalise`` shows each row's share (recall)."""
    classes = classes_of(set_report)
    cm = set_report["confusion_matrix"]
    if normalise:
        z = [[(v / sum(row) if sum(row) else 0.0) for v in row] for row in cm]
        text = [[f"{s:.1%}<br>({v})" for s, v in zip(zr, row)] for zr, row in zip(z, cm)]
        title, cbar = "Confusion matrix, share of each true class (row = recall)", "share"
    else:
        z = [list(row) for row in cm]
        text = [[str(v) for v in row] for row in cm]
        title, cbar = "Confusion matrix (counts)", "images"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=classes,
            y=classes,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            colorbar={"title": cbar},
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, xaxis_title="Predicted class", yaxis_title="True class", yaxis_autorange="reversed", height=420
    )
    return fig


def per_class_table(set_report: dict) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, exactly as stored."""
    rows = [
        {"class": c, "precision": v["precision"], "recall": v["recall"], "f1": v["f1"], "support": int(v["support"])}
        for c, v in set_report.get("per_class", {}).items()
    ]
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])


def roc_figure(set_report: dict) -> go.Figure:
    """One-vs-rest ROC curve per class, AUC in the legend."""
    fig = go.Figure()
    for c, r in set_report.get("roc", {}).items():
        auc = r.get("auc")
        fig.add_trace(
            go.Scatter(x=r["fpr"], y=r["tpr"], mode="lines", name=f"{c} (AUC {'n/a' if auc is None else f'{auc:.3f}'})")
        )
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "grey"}, hoverinfo="skip"
        )
    )
    fig.update_layout(
        title="ROC curves, one class vs the rest",
        xaxis_title="False positive rate",
        yaxis_title="True positive rate",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        height=420,
    )
    return fig


def reliability_figure(set_report: dict) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per bin, before and after calibration."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dot", "color": "grey"},
            hoverinfo="skip",
        )
    )
    for key, label, ece_key in (
        ("reliability_before", "before calibration", "ece_before_calibration"),
        ("reliability_after", "after calibration", "ece_after_calibration"),
    ):
        bins = [b for b in set_report.get(key, []) if b.get("count")]
        ece = set_report.get(ece_key)
        fig.add_trace(
            go.Scatter(
                x=[b["confidence"] for b in bins],
                y=[b["accuracy"] for b in bins],
                mode="lines+markers",
                name=f"{label} (ECE {'n/a' if ece is None else f'{ece:.3f}'})",
                customdata=[[b["count"], b["lower"], b["upper"]] for b in bins],
                hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{customdata[0]} images in "
                              "(%{customdata[1]:.2f}, %{customdata[2]:.2f}]<extra></extra>",
            )
        )
    fig.update_layout(
        title="Reliability diagram",
        xaxis_title="Mean confidence in bin",
        yaxis_title="Accuracy in bin",
        xaxis_range=[0, 1.02],
        yaxis_range=[0, 1.02],
        height=420,
    )
    return fig


def point_at_threshold(points: list[dict], threshold: float) -> dict | None:
    """The risk-coverage point in force at ``threshold`` (the highest grid threshold not above it)."""
    pts = [p for p in points if p["threshold"] <= threshold + 1e-9]
    return pts[-1] if pts else None


def risk_coverage_figure(set_report: dict, threshold: float | None = None) -> go.Figure:
    """Accuracy on accepted predictions against the share flagged for review, current threshold marked."""
    pts = [p for p in set_report.get("risk_coverage", []) if p.get("accuracy_accepted") is not None]
    fig = go.Figure(
        go.Scatter(
            x=[p["flagged_share"] for p in pts],
            y=[p["accuracy_accepted"] for p in pts],
            mode="lines+markers",
            name="thresholds",
            customdata=[p["threshold"] for p in pts],
            hovertemplate="threshold %{customdata:.3f}<br>flagged %{x:.1%}<br>accuracy on accepted "
                          "%{y:.2%}<extra></extra>",
        )
    )
    if threshold is not None:
        cur = point_at_threshold(set_report.get("risk_coverage", []), threshold)
        if cur is not None and cur.get("accuracy_accepted") is not None:
            fig.add_trace(
                go.Scatter(
                    x=[cur["flagged_share"]],
                    y=[cur["accuracy_accepted"]],
                    mode="markers",
                    name=f"current threshold {threshold:.3f}",
                    marker={"size": 14, "symbol": "star", "color": "crimson"},
                    hovertemplate="current threshold<br>flagged %{x:.1%}<br>accuracy on accepted "
                                  "%{y:.2%}<extra></extra>",
                )
            )
    # Fixed ranges inside 0-100%: left to itself, plotly pads a flat line of 100% out to 200%.
    ys = [p["accuracy_accepted"] for p in pts]
    low = max(0.0, min(ys) - 0.02) if ys else 0.0
    fig.update_layout(
        title="Risk–coverage: accuracy on accepted vs share flagged",
        xaxis_title="Share flagged for review",
        yaxis_title="Accuracy on accepted",
        xaxis_tickformat=".0%",
        yaxis_tickformat=".1%",
        height=420,
        xaxis_range=[0.0, 1.0],
        yaxis_range=[low, 1.0],
    )
    return fig


def independent_images(set_report: dict) -> tuple[int, str]:
    """How many independent images a set holds, and what they are: its cells where images are copies of few cells."""
    if has_copies(set_report):
        return int(set_report["per_cell"]["n_cells"]), "cells"
    return int(set_report.get("n_images", 0)), "images"


def has_copies(set_report: dict) -> bool:
    """Whether the set has several images of the same original cell (Kaggle TEST), so per-cell figures matter."""
    pc = set_report.get("per_cell")
    return bool(pc) and pc.get("accuracy") is not None and pc.get("n_cells", 0) < set_report.get("n_images", 0)


def per_cell_note(set_report: dict) -> str:
    """Plain words on why the per-image figure overstates the evidence, with the set's own counts."""
    pc = set_report["per_cell"]
    copies = set_report["n_images"] / pc["n_cells"]
    return (
        f"{set_report.get('name') or 'This set'} holds about {copies:.0f} augmented copies (rotations, flips, shifts) "
        f"of each of only "
        f"{pc['n_cells']} original cells, so its per-image figures count the same cell many times over and overstate "
        f"the number "
        "of independent cases. The per-cell figure gives each original cell one vote (the class with the highest mean "
        "probability "
        "over its copies); its wider interval is the honest measure of how sure we can be."
    )


def per_cell_summary(set_report: dict) -> str | None:
    """One sentence with the per-cell figure and its interval, or ``None`` when the set has no repeated cells."""
    if not has_copies(set_report):
        return None
    pc = set_report["per_cell"]
    lo, hi = pc["accuracy_ci95"]
    by_cell = pc.get("image_accuracy_ci95_by_cell")
    spread = (
        f" (95% CI {by_cell[0]:.1%} – {by_cell[1]:.1%} when whole cells are resampled)"
        if by_cell and None not in by_cell
        else ""
    )
    return (
        f"Per original cell: {pc['correct']} of {pc['n_cells']} correct = {pc['accuracy']:.1%} "
        f"(95% CI {lo:.1%} – {hi:.1%}), against {_pct(set_report.get('accuracy'))} per image{spread} over "
        f"{set_report.get('n_images', 0):,} images."
    )


def misclassified(predictions: pd.DataFrame | None, set_key: str | None = None, cap: int = GALLERY_CAP) -> pd.DataFrame:
    """Wrong predictions of one set, most confident first (the most instructive errors), at most ``cap``."""
    cols = ["file", "true_class", "predicted_class", "confidence"]
    if predictions is None or predictions.empty:
        return pd.DataFrame(columns=cols)
    df = predictions
    if set_key is not None and "set" in df.columns:
        df = df[df["set"] == set_key]
    wrong = df[df["true_class"] != df["predicted_class"]]
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(cap)[cols].reset_index(drop=True)


def resolve_image(file: str, root: Path) -> Path | None:
    """The image on disk for a predictions-table path (relative to the data root), or ``None``."""
    p = Path(file)
    p = p if p.is_absolute() else Path(root) / p
    return p if p.is_file() else None


def skipped_table(set_report: dict) -> pd.DataFrame:
    """Files that were not evaluated, with the reason."""
    return pd.DataFrame(
        [{"file": s[0], "reason": s[1]} for s in set_report.get("skipped", [])], columns=["file", "reason"]
    )


def report_json(set_report: dict) -> bytes:
    """The downloadable JSON report of one set."""
    return (json.dumps(set_report, indent=1) + "\n").encode()


def predictions_csv(frame: pd.DataFrame) -> bytes:
    """The downloadable per-image predictions."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.6f")
    return buf.getvalue().encode()

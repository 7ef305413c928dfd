"""The Classify page's "Whole fields" mode: upload smear fields, see every white cell boxed and classified.

Drawing and bookkeeping (:func:`draw_cells`, :class:`FieldSession`, :func:`cells_frame`) are plain
functions, tested without Streamlit; :func:`render` only lays them out. Results are cached per
``(field sha256, model version)``, so moving the threshold or picking another cell never re-runs the
detector or the network. Review decisions are keyed per cell by
:func:`~hematovision.detection.cells.cell_key` (the field's content hash and the box) in the same review
store as single images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from ..detection.cells import FieldResult, classify_fields, crop_cell
from ..detection.report import CELL_COLUMNS, fields_frame
from ..imaging.decode import decode_image
from ..imaging.sources import from_bytes, iter_uploads
from ..reports import tables as report
from ..review import store as review
from ..serving.classifier import is_flagged
from ..trust import banner_text, frame_shift
from .batching import summarise, thumbnail_uri
from .display import UNIDENTIFIED_HELP
from .results import differential_columns

#: One colour per class (RGB), in the model's class order, for boxes and the legend.
PALETTE = [(230, 120, 20), (40, 120, 230), (30, 160, 60), (200, 40, 160), (120, 120, 120)]
SAMPLE_FIELDS = sorted((Path(__file__).resolve().parents[2] / "sample_data").glob("field_*.jpg"))
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "zip"]
MODES = ("Single cells", "Whole fields")


def mode_toggle() -> str:
    """The Classify page's mode radio; the choice survives leaving the page (widget state does not)."""
    if "hv_mode" not in st.session_state:
        st.session_state["hv_mode"] = st.session_state.get("hv_mode_kept", MODES[0])
    mode = st.radio(
        "Mode",
        MODES,
        horizontal=True,
        key="hv_mode",
        help="Single cells: each image is one white cell. Whole fields: every white cell in a microscope "
        "field is found, boxed and classified.",
    )
    st.session_state["hv_mode_kept"] = mode
    return mode


def class_colour(cls: str, classes: Sequence[str]) -> tuple[int, int, int]:
    return PALETTE[list(classes).index(cls) % len(PALETTE)] if cls in classes else PALETTE[-1]


def draw_cells(rgb: np.ndarray, result: FieldResult, classes: Sequence[str], selected: int | None = None) -> np.ndarray:
    """A copy of the field with each cell's box in its class's colour and its number (the selected one thicker)."""
    out = rgb.copy()
    side = max(rgb.shape[:2])
    thick = max(2, round(side / 250))
    scale = max(0.6, side / 900)
    for c in result.cells:
        col = class_colour(c.prediction.predicted_class, classes)
        t = thick * 2 if c.index == selected else thick
        cv2.rectangle(out, (c.box.x0, c.box.y0), (c.box.x1 - 1, c.box.y1 - 1), col, t, cv2.LINE_AA)
        label = str(c.index)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x, y = c.box.x0, max(th + base, c.box.y0)
        cv2.rectangle(out, (x, y - th - base), (x + tw + 2 * thick, y), col, -1)
        cv2.putText(
            out, label, (x + thick, y - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
        )
    return out


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@dataclass
class FieldSession:
    """The fields handed over in this session and their results, by ``(sha256, model version)``."""

    uploads: list[tuple[str, bytes]] = field(default_factory=list)
    results: dict[tuple[str, str], FieldResult] = field(default_factory=dict)
    errors: dict[str, FieldResult] = field(default_factory=dict)  # by display name: unreadable inputs
    inferred: int = 0  # fields actually run through detector and network

    def set_uploads(self, pairs) -> None:
        self.uploads = [(n, bytes(d)) for n, d in pairs]

    def entries(self) -> list[tuple[str, str, bytes | None, str]]:
        """``(name, sha256, bytes, error)`` per field, zips opened, in order."""
        out = []
        for item in iter_uploads(self.uploads):
            if item.error:
                out.append((item.name, "", None, item.error))
                continue
            try:
                data = item.read()
            except Exception as exc:  # a damaged zip member: an error row, not a traceback
                out.append((item.name, "", None, str(exc) or type(exc).__name__))
                continue
            out.append((item.name, hashlib.sha256(data).hexdigest(), data, ""))
        return out

    def classify(self, clf, threshold: float, progress=None) -> list[FieldResult]:
        """Results for every entry, in order; only fields not seen before with this model are run."""
        entries = self.entries()
        todo = [(n, d) for n, sha, d, err in entries if not err and (sha, clf.version) not in self.results]
        if todo:
            for r in classify_fields(
                clf, [from_bytes(n, d) for n, d in todo], threshold, thumbnails=True, progress=progress
            ):
                self.inferred += 1
                if r.ok:
                    self.results[(r.sha256, clf.version)] = r
                else:
                    self.errors[r.file] = r
        out = []
        for name, sha, _, err in entries:
            if err:
                out.append(FieldResult(name, error=err))
            elif (sha, clf.version) in self.results:
                out.append(replace(self.results[(sha, clf.version)], file=name))
            else:
                out.append(replace(self.errors.get(name, FieldResult(name, error="unreadable")), file=name))
        return out

    def image(self, sha256: str) -> np.ndarray | None:
        for _, sha, data, _ in self.entries():
            if sha == sha256 and data:
                return decode_image(data).rgb
        return None


def cells_frame(
    results: Sequence[FieldResult], classes: Sequence[str], threshold: float, decisions: dict
) -> pd.DataFrame:
    """One row per cell (and per empty or unreadable field), flagged at ``threshold`` (with ``flag_reason``), with
    review columns and a ``thumbnail`` data URI per cell."""
    frame = report.apply_threshold(fields_frame(results, classes), threshold)
    thumbs = [thumbnail_uri(c.prediction.thumbnail) for r in results for c in r.cells]
    it = iter(thumbs)
    frame["thumbnail"] = ["" if pd.isna(k) else next(it) for k in frame["cell"]]
    has_cell = frame["cell"].notna()
    frame = report.with_reviews(frame, decisions)
    frame.loc[~has_cell, "final_class"] = ""
    return frame


def cells_csv(frame: pd.DataFrame, classes: Sequence[str], threshold: float, version: str) -> str:
    """The per-cell CSV: ``classify --fields`` columns (the trust columns included), the review columns, threshold
    and model version."""
    cols = report.columns(classes) + report.REVIEW_COLUMNS + CELL_COLUMNS + report.TRUST_COLUMNS
    return report.to_csv(frame[cols], threshold=float(threshold), model_version=version)


def render(clf, threshold: float, store) -> None:
    """The Whole fields mode (called by ``pages/classify.py``)."""
    classes = list(clf.classes_)
    sess: FieldSession = st.session_state.setdefault("hv_fields", FieldSession())

    def on_upload() -> None:
        files = st.session_state.get("hv_fields_uploader") or []
        sess.set_uploads([(f.name, f.getvalue()) for f in files])

    st.file_uploader(
        "Smear fields: microscope images with any number of white cells (JPEG, PNG, BMP, TIFF) or zip archives",
        type=IMAGE_TYPES,
        accept_multiple_files=True,
        key="hv_fields_uploader",
        on_change=on_upload,
        help="Every white cell found gets a row; a field without one gets a row saying so.",
    )
    actions = st.container(horizontal=True)  # buttons at their own width: whole labels in a narrow window
    if SAMPLE_FIELDS and actions.button(
        "Load sample field", help="A generated field (sample_data/field_*.jpg), not patient data"
    ):
        sess.set_uploads([(p.name, p.read_bytes()) for p in SAMPLE_FIELDS])
    if sess.uploads and actions.button("Clear fields"):
        sess.set_uploads([])
        st.rerun()
    if not sess.uploads:
        st.info("Upload smear fields, or load the sample field, to start.")
        return

    bar = st.progress(0.0, text="Finding and classifying white cells…")
    results = sess.classify(
        clf,
        threshold,
        progress=lambda d: bar.progress(min(1.0, d / max(1, len(sess.uploads))), text=f"Searched {d} field(s)"),
    )
    bar.empty()
    decisions = {}
    if store is not None:
        decisions = {sha: d for (sha, _), d in store.current(clf.version).items()}
        _queue_flagged(store, sess, results, clf, threshold)
    frame = cells_frame(results, classes, threshold, decisions)
    shift = frame_shift(frame[frame["cell"].notna()], clf.trust)  # as in single-cell mode: a shifted batch is held
    if shift.detected:
        frame = report.hold_frame(frame)
    cell_rows = frame[frame["cell"].notna()]

    st.subheader("Summary")
    summary = summarise(cell_rows, classes)
    m = st.columns(3) + st.columns(3)  # two rows of three, as in single-cell mode
    m[0].metric("Fields", len(results))
    m[1].metric("White cells", len(cell_rows))
    m[2].metric(
        "Flagged for review",
        int(cell_rows["flagged"].sum()),
        help=f"Confidence below the threshold {threshold:.3f}, or unfamiliar; every cell when the batch looks unlike "
        "the training images (the warning below)",
    )
    m[3].metric("Empty fields", sum(1 for r in results if r.ok and not r.cells), help="Fields without a white cell")
    m[4].metric("Errors", sum(1 for r in results if not r.ok))
    m[5].metric("Unidentified", summary.n_unidentified, help=UNIDENTIFIED_HELP)
    if shift.detected:
        st.warning(banner_text(shift, held=True), icon="⚠️")
    s1, s2 = st.columns([4, 3])
    s1.dataframe(summary.differential, hide_index=True, column_config=differential_columns())
    fig = px.bar(summary.differential, x="class", y="count", text="count", title="Differential (final classes)")
    fig.update_layout(height=280, margin=dict(t=40, b=10))
    s2.plotly_chart(fig, width="stretch")

    st.subheader("Field")
    ok = [i for i, r in enumerate(results) if r.ok]
    if ok:
        fi = st.selectbox(
            "Field", ok, format_func=lambda i: f"{results[i].file} ({len(results[i].cells)} cells)", key="hv_field_pick"
        )
        r = results[fi]
        rgb = sess.image(r.sha256)
        cell_ids = [c.index for c in r.cells]
        pick = (
            st.selectbox(
                "Cell",
                cell_ids,
                key=f"hv_cell_pick_{r.sha256[:12]}",
                format_func=lambda k: (
                    f"Cell {k}: {r.cells[k - 1].prediction.predicted_class} "
                    f"({r.cells[k - 1].prediction.confidence:.3f})"
                ),
            )
            if cell_ids
            else None
        )
        f1, f2 = st.columns([3, 2])
        if rgb is not None:
            f1.image(
                draw_cells(rgb, r, classes, pick),
                caption=f"{r.file}: {len(r.cells)} white cell(s); boxes coloured by class",
                width="stretch",
            )
        legend = " · ".join(f"<span style='color:rgb{class_colour(c, classes)}'>■</span> {c}" for c in classes)
        f1.markdown(legend, unsafe_allow_html=True)
        if not r.cells:
            f2.info(r.note or "No white cell found in this field.")
        elif pick is not None and rgb is not None:
            _cell_detail(f2, r, pick, rgb, classes, clf, threshold, store, decisions)

    st.subheader("Cells")
    col_cfg = {
        "thumbnail": st.column_config.ImageColumn("Cell", width="small"),
        "confidence": st.column_config.ProgressColumn("Confidence", min_value=0.0, max_value=1.0, format="%.3f"),
        "flagged": st.column_config.CheckboxColumn("Flagged"),
        "partial": st.column_config.CheckboxColumn(
            "Partial", help="The box touches the image edge: the cell may be cut"
        ),
    }
    col_cfg.update({f"p_{c}": st.column_config.NumberColumn(f"p({c})", format="%.3f") for c in classes})
    order = [
        "thumbnail",
        "file",
        "cell",
        "predicted_class",
        "confidence",
        "final_class",
        *[f"p_{c}" for c in classes],
        "flagged",
        "partial",
        "x0",
        "y0",
        "x1",
        "y1",
        "reviewed_class",
        "note",
        "error",
    ]
    st.dataframe(frame, column_config=col_cfg, column_order=order, hide_index=True, width="stretch")
    st.download_button(
        f"Download per-cell CSV ({len(frame)} rows)",
        cells_csv(frame, classes, threshold, clf.version),
        file_name="hematovision_cells.csv",
        mime="text/csv",
        on_click="ignore",
    )


def _queue_flagged(store, sess: FieldSession, results: Sequence[FieldResult], clf, threshold: float) -> None:
    """Flagged cells go to the review queue (each once per session), with the cell's crop as thumbnail."""
    done: set = st.session_state.setdefault("hv_fields_queued", set())
    todo = []
    for r in results:
        flagged = [
            c
            for c in r.cells
            if is_flagged(c.prediction.confidence, threshold, c.prediction.unfamiliar)
            and (c.prediction.sha256, clf.version) not in done
        ]
        if not flagged:
            continue
        rgb = sess.image(r.sha256)
        for c in flagged:
            label = f"{r.file} #cell {c.index}"
            todo.append(
                (
                    replace(c.prediction, file=label, flagged=True),
                    _png(crop_cell(rgb, c.box)) if rgb is not None else b"",
                )
            )
    for sent in (False, True):  # unfamiliar cells as sent: pending whatever the threshold (app.state does the same)
        part = [t for t in todo if t[0].unfamiliar == sent]
        if part:
            review.queue_with_images(store, part, clf.classes_, clf.version, threshold, sent=sent)
    done.update((p.sha256, clf.version) for p, _ in todo)


def _cell_detail(
    col, r: FieldResult, k: int, rgb: np.ndarray, classes, clf, threshold: float, store, decisions
) -> None:
    c = r.cells[k - 1]
    p = c.prediction
    crop = crop_cell(rgb, c.box)
    col.image(crop, caption=f"Cell {k}" + (" (partial: cut by the image edge)" if c.box.partial else ""), width=220)
    probs = [{"class": cls, "probability": float(v)} for cls, v in zip(classes, p.probabilities)]
    fig = px.bar(
        probs,
        x="probability",
        y="class",
        orientation="h",
        range_x=[0, 1],
        text_auto=".3f",
        title=f"Cell {k}: {p.predicted_class} ({p.confidence:.3f})",
    )
    fig.update_layout(height=240, margin=dict(t=40, b=10))
    col.plotly_chart(fig, width="stretch")
    if p.unfamiliar:
        col.warning("Unfamiliar: unlike the cells the model was trained on. Left out of the differential until a "
                    "person classifies it.")
    elif is_flagged(p.confidence, threshold):
        col.warning("Confidence below the review threshold: a person should check this cell.")
    if store is None:
        return
    current = decisions.get(p.sha256)
    with col.form(f"hv_cell_review_{p.sha256[-40:]}", clear_on_submit=True, border=True):
        st.markdown(
            "**Review this cell**"
            + (f" — currently **{current.reviewed_class}** by {current.reviewer or 'anonymous'}" if current else "")
        )
        choices = classes + [review.UNUSABLE]
        verdict = st.selectbox(
            "Reviewed class",
            choices,
            index=choices.index(p.predicted_class),
            format_func=lambda v: "not a white cell / unusable" if v == review.UNUSABLE else v,
        )
        who = st.text_input("Reviewer", value=st.session_state.get("hv_reviewer", ""))
        note = st.text_input("Note (optional)")
        if st.form_submit_button("Save review"):
            label = f"{r.file} #cell {k}"
            review.queue_with_images(
                store,
                [(replace(p, file=label, flagged=is_flagged(p.confidence, threshold)), _png(crop))],
                classes,
                clf.version,
                threshold,
            )
            store.decide(p.sha256, clf.version, verdict, who, note)
            st.session_state["hv_reviewer"] = who
            st.rerun()

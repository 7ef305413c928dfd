"""The report and the gallery on the dashboard's pages: Streamlit glue, one call per page.

What is shown comes from :mod:`hematovision.reports.content` (the same function the CLI's PDF uses) and
:mod:`.gallery`; this module only lays it out. A tile's *Open* button hands the cell to the
page's own detail view (Classify: the detail with its review form; Review: the current item).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pandas as pd
import streamlit as st

from ..reports.content import MAX_TEXT, ModelInfo, build_report, model_info
from ..reports.pdf import render_pdf
from ..review.store import Item
from . import gallery as gal

COLUMNS = 6
FIRST = 36  # tiles per class before "show all"
_FRAMED_KEY = "hv_gallery_framed"
_LABELS_KEY = "hv_report_labels"  # sample ID and operator, read by the deferred PDF callable


def _model(clf) -> ModelInfo:
    return model_info(clf.version, clf.model_dir)


def report_filename(sample_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id.strip())[:60].strip("_")
    return f"hematovision_report_{safe}.pdf" if safe else "hematovision_report.pdf"


def report_pdf(
    frame: pd.DataFrame, clf, threshold: float, images: dict[str, bytes], sample_id: str, operator: str
) -> bytes:
    """The batch's report as PDF bytes (the dashboard's frame has its reviews applied already)."""
    content = build_report(
        frame,
        sample_id=sample_id,
        operator=operator,
        images=lambda file, sha: images.get(sha),
        model=_model(clf),
        threshold=threshold,
        source="dashboard batch",
    )
    return render_pdf(content)


def report_download(frame: pd.DataFrame, clf, threshold: float, images: dict[str, bytes]) -> None:
    """Sample ID, operator and "Download report (PDF)" for the whole current batch.

    The PDF is made when the button is clicked (Streamlit's deferred download, on another thread), not on every
    rerun. It reads the sample ID and operator from a plain dict that the inputs' callbacks update at the start of
    the rerun they trigger, so a name typed just before the click is on the report.
    """
    st.markdown("**Differential report (PDF)** for the whole batch: differential, review status, cell gallery.")
    labels: dict = st.session_state.setdefault(_LABELS_KEY, {})

    def keep(name: str) -> None:
        labels[name] = st.session_state.get(f"hv_report_{name}", "")

    c1, c2, c3 = st.columns([2, 2, 2], vertical_alignment="bottom")
    c1.text_input(
        "Sample ID",
        key="hv_report_sample",
        placeholder="e.g. S-2026-0412",
        max_chars=MAX_TEXT,
        on_change=keep,
        args=("sample",),
    )
    c2.text_input(
        "Operator",
        key="hv_report_operator",
        placeholder="your name",
        max_chars=MAX_TEXT,
        on_change=keep,
        args=("operator",),
    )
    keep("sample")
    keep("operator")
    snapshot = frame.drop(columns=["thumbnail"], errors="ignore").copy()
    c3.download_button(
        "Download report (PDF)",
        lambda: report_pdf(snapshot, clf, threshold, images, labels.get("sample", ""), labels.get("operator", "")),
        file_name=report_filename(labels.get("sample", "")),
        mime="application/pdf",
        on_click="ignore",
        key="hv_report_pdf",
        help="PRELIMINARY while any flagged cell is unreviewed; once all are reviewed it names the reviewers "
        "and has a sign-off line.",
    )


def _draw(groups: Sequence[gal.TileGroup], on_open: Callable[[gal.Tile], None], key: str) -> None:
    if not groups:
        st.info("No classified cell to show.")
        return
    st.caption(
        "Each picture is the framed cell the model classified. Frame: **orange** flagged, not yet reviewed; "
        "**blue** reclassified or unusable, **green** confirmed by a reviewer. *Open* shows the detail and review form."
    )
    show_all = True
    if any(len(g.tiles) > FIRST for g in groups):
        show_all = st.toggle(f"Show every cell (the first {FIRST} of each class otherwise)", key=f"{key}_all")
    for g in groups:
        st.markdown(f"**{g.title}**")
        tiles = g.tiles if show_all else g.tiles[:FIRST]
        for start in range(0, len(tiles), COLUMNS):
            cols = st.columns(COLUMNS)
            for col, t in zip(cols, tiles[start : start + COLUMNS]):
                col.image(t.image, caption=t.caption, width="stretch")
                col.button(
                    f"Open #{t.position + 1}",
                    key=f"{key}_open_{g.name}_{t.position}",
                    on_click=on_open,
                    args=(t,),
                    width="stretch",
                )


def classify_gallery(view: pd.DataFrame, clf, images: dict[str, bytes], detail_key: str) -> None:
    """The Classify page's rows (as filtered) by final class; *Open* selects the row in the detail view."""
    framed = st.session_state.setdefault(_FRAMED_KEY, {})
    groups = gal.batch_gallery(view.drop(columns=["thumbnail"], errors="ignore"), images.get, _model(clf), framed)

    def open_row(tile: gal.Tile) -> None:  # the detail view is keyed by the image's hash, not by row position
        st.session_state[detail_key] = view.at[view.index[tile.position], "sha256"]

    _draw(groups, open_row, "hv_gallery")


def review_gallery(items: Sequence[Item], image_of: Callable[[Item], bytes | None], clf, current_key: str) -> None:
    """The Review page's queue (as filtered) by final class; *Open* makes the cell the current item."""
    framed = st.session_state.setdefault(_FRAMED_KEY, {})
    version = items[0].model_version if items else ""
    model = _model(clf) if clf is not None and clf.version == version else model_info(version)
    groups = gal.review_gallery(items, image_of, model, framed)

    def open_item(tile: gal.Tile) -> None:
        st.session_state[current_key] = items[tile.position].key

    _draw(groups, open_item, "hv_review_gallery")

"""Model evaluation: how well the shipped model does on held-out test sets, and on your own labeled images.

Thin page: every figure is built by :mod:`hematovision.app.eval_views` from the report
dict, so what is shown is what ``evaluation.json`` (or the live report) says.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from hematovision.app import eval_views as ev
from hematovision.app import state as app_state
from hematovision.config import data_root
from hematovision.data.labeled import labeled_from_csv, labeled_from_zip
from hematovision.evaluation.evaluate import evaluate_labeled
from hematovision.modeling import persistence
from hematovision.stats.threshold_advice import MAX_FLAGGED, MIN_ACCEPTED, advise

USER_SETS = "eval_user_sets"  # {key: {"report": dict, "frame": DataFrame}} added this session
SET_KEY = "eval_set"
NEXT_SET = "eval_select_next"  # set after an upload so the selector shows it on the next run


@st.cache_data(show_spinner=False)
def _read_predictions(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


def shipped_predictions() -> pd.DataFrame | None:
    path = app_state.model_path() / persistence.PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        return _read_predictions(str(path), path.stat().st_mtime)
    except (ValueError, OSError):
        return None


def add_user_set(name: str, labeled) -> None:
    """Evaluate uploaded labeled images live and keep the result for this session."""
    clf = app_state.get_classifier()
    if clf is None:
        return
    total = max(len(labeled.inputs), 1)
    bar = st.progress(0.0, text=f"Classifying 0 of {len(labeled.inputs)} images…")

    def progress(n: int) -> None:
        bar.progress(min(n / total, 1.0), text=f"Classifying {n} of {len(labeled.inputs)} images…")

    report, frame = evaluate_labeled(clf, labeled, name, progress=progress)
    bar.empty()
    if report.get("n_images"):
        sets = st.session_state.setdefault(USER_SETS, {})
        key = f"user_{len(sets) + 1}"
        sets[key] = {"report": report, "frame": frame}
        st.session_state[NEXT_SET] = key
        st.rerun()
    st.error(f"None of the uploaded images could be evaluated ({len(report.get('skipped', []))} skipped).", icon="🚫")
    st.dataframe(ev.skipped_table(report), hide_index=True)


def upload_section(classes: list[str]) -> None:
    st.subheader("Evaluate your own labeled images")
    st.caption("Images stay in this session's memory only. Each class must be one of: " + ", ".join(classes) + ".")
    name = st.text_input("Name for this set", value="My labeled images", key="eval_upload_name")
    zip_tab, csv_tab = st.tabs(["Zip of class folders", "Images + CSV of labels"])
    with zip_tab:
        zf = st.file_uploader(
            "A .zip whose folders are named after the classes (e.g. lymphocyte/img1.png)", type=["zip"], key="eval_zip"
        )
        if st.button("Evaluate the zip", disabled=zf is None, key="eval_zip_go"):
            add_user_set(name, labeled_from_zip(zf.name, zf.getvalue(), classes))
    with csv_tab:
        imgs = st.file_uploader(
            "Images", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"], accept_multiple_files=True, key="eval_imgs"
        )
        labels = st.file_uploader("CSV with columns file,label", type=["csv"], key="eval_csv")
        if st.button("Evaluate the images", disabled=not imgs or labels is None, key="eval_csv_go"):
            add_user_set(name, labeled_from_csv([(f.name, f.getvalue()) for f in imgs], labels.getvalue(), classes))


def headline_section(s: dict) -> None:
    cols = st.columns(4)
    for col, m in zip(cols, ev.headline(s)):
        with col:
            st.metric(m["label"], m["value"], help=m["help"])
            if m["caption"]:
                st.caption(m["caption"])


def threshold_section(s: dict) -> None:
    st.subheader("Risk–coverage and the review threshold")
    current = app_state.threshold()
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(ev.risk_coverage_figure(s, current), key="eval_rc")
    with right:
        cur = ev.point_at_threshold(s.get("risk_coverage", []), current)
        if cur and cur.get("accuracy_accepted") is not None:
            st.markdown(
                f"At the current threshold **{current:.3f}**: {cur['accuracy_accepted']:.2%} accurate on accepted "
                f"images, "
                f"{cur['flagged_share']:.1%} flagged for review (grid point {cur['threshold']:.3f})."
            )
        target = st.number_input(
            "Target accuracy on accepted images",
            min_value=0.5,
            max_value=0.999,
            value=0.99,
            step=0.001,
            format="%.3f",
            key="eval_target",
        )
        many, unit = ev.independent_images(s)
        advice = advise(s.get("risk_coverage", []), s.get("n_images", 0), float(target), many, unit)
        if advice.threshold is None:
            st.warning(advice.message)
        else:
            st.markdown(advice.message)
            st.button(
                f"Use threshold {advice.threshold:.3f} everywhere",
                key="eval_set_threshold",
                on_click=app_state.set_threshold,
                args=(advice.threshold,),
                help="Sets the shared review threshold (the sidebar slider) for every page.",
            )
        st.caption(
            f"A threshold is proposed only where the 95% lower bound of the accuracy on accepted {unit} reaches the "
            f"target, at least {MIN_ACCEPTED} {unit} are accepted and at most {MAX_FLAGGED:.0%} are flagged"
            + (f"; copies of one cell count once ({many} cells)." if unit == "cells" else ".")
        )


def gallery_section(s: dict, key: str, user: dict | None) -> None:
    st.subheader("Misclassified examples")
    if user is not None:
        wrong = ev.misclassified(user["frame"], None)
        if wrong.empty:
            st.success("No misclassified images in this set.")
        else:
            st.caption(f"The {len(wrong)} most confident mistakes (uploaded images are not kept, so they are listed).")
            st.dataframe(wrong, hide_index=True)
        return
    preds = shipped_predictions()
    if preds is None:
        st.info("No per-image predictions (test_predictions.csv) beside this model.")
        return
    wrong = ev.misclassified(preds, key)
    if wrong.empty:
        st.success("No misclassified images in this set.")
        return
    root = data_root()
    paths = [ev.resolve_image(f, root) for f in wrong["file"]]
    st.caption(f"The {len(wrong)} most confident mistakes (at most {ev.GALLERY_CAP}).")
    if not any(paths):
        st.info(f"The test images are not on this machine (data root {root}), so the mistakes are listed instead.")
        st.dataframe(wrong, hide_index=True)
        return
    cols = st.columns(6)
    for k, (row, path) in enumerate(zip(wrong.itertuples(), paths)):
        with cols[k % 6]:
            text = f"true {row.true_class} · predicted {row.predicted_class} · {row.confidence:.1%}"
            if path is None:
                st.text(f"{Path(row.file).name}: image absent. {text}")
            else:
                st.image(str(path), caption=text)


st.title("Model evaluation")
app_state.disclaimer()

report = app_state.get_evaluation()
user_sets: dict = st.session_state.setdefault(USER_SETS, {})
if report is None:
    st.info(
        "This model has no evaluation.json yet (run `python -m hematovision evaluate`). You can still evaluate your "
        "own labeled images below."
    )

options = ev.set_options(report, user_sets)
if NEXT_SET in st.session_state:
    st.session_state[SET_KEY] = st.session_state.pop(NEXT_SET)
if st.session_state.get(SET_KEY) not in options:
    st.session_state.pop(SET_KEY, None)

if options:
    key = st.selectbox("Test set", list(options), format_func=options.get, key=SET_KEY)
    user = user_sets.get(key)
    s = user["report"] if user else report["sets"][key]
    if report and not user:
        st.caption(
            f"Model {report.get('model_version', '?')} · temperature {report.get('temperature', float('nan')):.3f} · "
            f"source: {s.get('source', '?')}. These images were never used for training or tuning."
        )

    headline_section(s)
    summary = ev.per_cell_summary(s)
    if summary:
        pc = s["per_cell"]
        c1, c2 = st.columns([1, 3])
        c1.metric("Per-cell accuracy", f"{pc['accuracy']:.1%}", help="One vote per original cell.")
        c2.markdown(summary)
        c2.caption(ev.per_cell_note(s))

    if user:
        skipped = ev.skipped_table(s)
        if not skipped.empty:
            with st.expander(f"{len(skipped)} files skipped (not evaluated)", expanded=True):
                st.dataframe(skipped, hide_index=True)
        d1, d2 = st.columns(2)
        d1.download_button(
            "Download the report (JSON)",
            ev.report_json(s),
            file_name=f"{key}_evaluation.json",
            mime="application/json",
            key="eval_dl_json",
        )
        d2.download_button(
            "Download per-image predictions (CSV)",
            ev.predictions_csv(user["frame"]),
            file_name=f"{key}_predictions.csv",
            mime="text/csv",
            key="eval_dl_csv",
        )

    st.subheader("Confusion matrix and per-class figures")
    left, right = st.columns([3, 2])
    with left:
        norm = st.toggle("Show each row as shares (recall)", key="eval_norm")
        st.plotly_chart(ev.confusion_figure(s, normalise=norm), key="eval_cm")
    with right:
        st.dataframe(
            ev.per_class_table(s),
            hide_index=True,
            column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1")},
        )

    left, right = st.columns(2)
    with left:
        st.plotly_chart(ev.roc_figure(s), key="eval_roc")
    with right:
        st.plotly_chart(ev.reliability_figure(s), key="eval_rel")

    threshold_section(s)
    gallery_section(s, key, user)

st.divider()
card = app_state.get_card()
classes = list(card.classes) if card else list((report or {}).get("classes", []))
if classes:
    upload_section(classes)
else:
    st.warning("No model is loaded, so uploaded images cannot be evaluated.")

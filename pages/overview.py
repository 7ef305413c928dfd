"""Home page: what HematoVision is for, the model card at a glance, and the way to every page."""

import pandas as pd
import streamlit as st

from hematovision import DISCLAIMER
from hematovision.app import display
from hematovision.app import state as app_state

st.title("🩸 HematoVision")
st.markdown(
    "HematoVision classifies microscope images of **single white blood cells** into four types "
    "(eosinophil, lymphocyte, monocyte, neutrophil) and counts them into a differential. "
    "It is built for **hematology lab staff, researchers and students** who want to see how a calibrated image "
    "classifier behaves on blood-smear images, and where it should not be trusted."
)
st.warning(f"**{DISCLAIMER}** Results can be wrong, especially on images unlike the training data "
           "(other stains, microscopes or cell types).", icon="⚠️")

st.subheader("Start here")
s1, s2, s3 = st.columns(3)
with s1:
    st.markdown("**1. Classify**")
    st.page_link("pages/classify.py", label="Load the sample images, or upload yours", icon="🔬")
    st.caption("Single-cell images (JPEG, PNG, BMP, TIFF); many images as one .zip.")
with s2:
    st.markdown("**2. Review what is flagged**")
    st.page_link("pages/review.py", label="Confirm or correct uncertain cells", icon="🧑‍🔬")
    st.caption("Flagged: confidence below the review threshold (sidebar). Keys: Y confirm, 1–4 a class, U unusable.")
with s3:
    st.markdown("**3. Download the report**")
    st.page_link("pages/classify.py", label="CSV of the batch, with reviewed classes", icon="⬇️")
    st.caption("On Classify, below the table; every review decision is downloadable on the Review page.")

st.subheader("Pages")
p1, p2, p3, p4, p5 = st.columns(5)
for col, (page, label, icon, what) in zip((p1, p2, p3, p4, p5), [
    ("pages/overview.py", "Home", "🏠", "This page: purpose, model card, threshold."),
    ("pages/classify.py", "Classify", "🔬",
     "Upload images or zips, the table and differential, the detail view, a CSV."),
    ("pages/review.py", "Review", "🧑‍🔬", "Flagged images one at a time: confirm, reclassify or mark unusable."),
    ("pages/evaluation.py", "Model evaluation", "📊",
     "Accuracy, calibration and the accuracy/coverage trade-off on held-out test sets."),
    ("pages/models.py", "Model versions", "🧬", "The shipped model and versions adapted to your laboratory's images."),
]):
    with col:
        st.page_link(page, label=label, icon=icon)
        st.caption(what)

st.subheader("The review threshold")
t = app_state.threshold()
st.markdown(
    f"The **review threshold** in the sidebar (now **{t:.3f}**) is the calibrated confidence below which a "
    "prediction is **flagged for human review**. Raising it flags more images and makes the accepted ones "
    "more accurate; lowering it flags fewer. Nothing is hidden and nothing is re-classified when you move it: "
    "only the flags change."
)

st.subheader("Model card at a glance")
card = app_state.get_card()
if card is None:
    st.info("No model found yet. Train one with `python -m hematovision train`, or set `HEMATOVISION_MODEL` "
            "to a model folder.")
    st.stop()

c = st.columns(4)
c[0].metric("Classes", len(card.classes))
c[1].metric("Default threshold", f"{card.default_threshold:.3f}")
c[2].metric("Input size", f"{card.input_size} px")
c[3].metric("Temperature", f"{card.temperature:.2f}")
st.markdown("**Classes:** " + ", ".join(f"`{x}`" for x in card.classes))
st.caption(f"Model version `{card.version}` · {card.architecture}")
if card.framing == "cell":
    st.caption(
        "Each image is first framed on its white cell: the nucleus is located by its stain and a square twice "
        "its size is cut around it, so cells from differently cropped or magnified images reach the model at one scale."
    )
if threshold_choice := display.threshold_choice_text(card.threshold):
    st.caption(threshold_choice)

ev = app_state.get_evaluation()
if not ev:
    st.info("No evaluation has been written for this model yet (`models/evaluation.json`). "
            "Run `python -m hematovision evaluate` to measure it on the held-out test sets.")
    st.stop()


def _pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


rows = []
for key, s in ev.get("sets", {}).items():
    # Copies of one cell are not independent: where cells repeat, the interval resamples whole cells.
    ci = (s.get("per_cell") or {}).get("image_accuracy_ci95_by_cell") or s.get("accuracy_ci95") or [None, None]
    rows.append(
        {
            "Test set": s.get("name", key),
            "Images": s.get("n_images"),
            "Accuracy": _pct(s.get("accuracy")),
            "95% CI": f"{_pct(ci[0])} – {_pct(ci[1])}" if ci[0] is not None else "–",
            "Macro F1": f"{s['macro_f1']:.3f}" if s.get("macro_f1") is not None else "–",
            "ECE before calibration": f"{s['ece_before_calibration']:.3f}"
            if s.get("ece_before_calibration") is not None
            else "–",
            "ECE after calibration": f"{s['ece_after_calibration']:.3f}"
            if s.get("ece_after_calibration") is not None
            else "–",
            "ECE noise floor": f"{s['ece_floor']['median']:.3f}"
            if (s.get("ece_floor") or {}).get("median") is not None
            else "–",
            "Per-cell accuracy": _pct(s["per_cell"].get("accuracy")) if s.get("per_cell") else "–",
        }
    )
if rows:
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        column_config={"Test set": st.column_config.TextColumn("Test set")},
    )
    st.caption(
        "Held-out test sets, never used for training or threshold choice. ECE (expected calibration error) "
        "measures how far confidence is from accuracy; lower is better; its noise floor is what a perfectly "
        "calibrated model would read on a set of that size. Kaggle TEST images are augmented copies of cells, so "
        "its interval resamples whole cells and the per-cell figure counts each cell once. Details on the "
        "*Model evaluation* page."
    )
    note = display.ece_worse_note(ev.get("sets", {}))
    if note:
        st.caption(note)

"""Home page: what HematoVision is for, the model card at a glance, and the way to every page."""

import pandas as pd
import streamlit as st

from hematovision import DISCLAIMER
from hematovision.app import state as app_state

st.title("🩸 HematoVision")
st.markdown(
    "HematoVision classifies microscope images of **single white blood cells** into four types "
    "(eosinophil, lymphocyte, monocyte, neutrophil) and counts them into a differential. "
    "It is built for **students, teachers and researchers** who want to explore how a calibrated image "
    "classifier behaves on blood-smear images, and where it should not be trusted."
)
st.warning(f"**{DISCLAIMER}** Results can be wrong, especially on images unlike the training data "
           "(other stains, microscopes or cell types).", icon="⚠️")

st.subheader("Pages")
p1, p2, p3 = st.columns(3)
with p1:
    st.page_link("pages/overview.py", label="Home", icon="🏠")
    st.caption("This page: purpose, model card, threshold.")
with p2:
    st.page_link("pages/classify.py", label="Classify", icon="🔬")
    st.caption("Upload images or zips, review flagged cells, download a CSV.")
with p3:
    st.page_link("pages/evaluation.py", label="Model evaluation", icon="📊")
    st.caption("Accuracy, calibration and the accuracy/coverage trade-off on held-out test sets.")

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
if card.threshold.get("target_accuracy") is not None:
    st.caption(
        f"The default threshold was chosen on validation data to reach about "
        f"{card.threshold['target_accuracy']:.0%} accuracy on accepted images."
    )

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

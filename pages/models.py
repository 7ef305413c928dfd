"""Model versions: see the shipped model and lab-adapted versions, switch between them, adapt a new one."""

import datetime as dt

import pandas as pd
import streamlit as st

from hematovision.app import adapting
from hematovision.app import state as app_state
from hematovision.modeling import persistence, versions

st.title("Model versions")
app_state.disclaimer()

found = versions.list_versions()
current = app_state.model_path()
rows = []
for v in found:
    card = persistence.load_card(v.path)
    ad = card.training.get("adaptation", {})
    rows.append(
        {
            "in use": str(v.path) == str(current),
            "version": v.version,
            "kind": "shipped" if v.shipped else "adapted",
            "adapted from": v.parent or "",
            "labeled images": sum(ad.get("labeled_counts", {}).values()) if ad else None,
            "cross-fitted accuracy": ad.get("crossfit_accuracy") if ad else None,
            "default threshold": card.default_threshold,
            "created": v.created,
            "folder": str(v.path),
        }
    )
st.dataframe(
    pd.DataFrame(rows).astype({"labeled images": "Int64", "cross-fitted accuracy": "Float64"}),
    hide_index=True,
    width="stretch",
    column_config={
        "in use": st.column_config.CheckboxColumn("In use", width="small"),
        "labeled images": st.column_config.NumberColumn(
            "Labeled images", help="Images of your laboratory it was adapted on"
        ),
        "cross-fitted accuracy": st.column_config.NumberColumn(
            "Cross-fitted accuracy", format="percent", help="Each labeled image scored by a head fitted without it"
        ),
        "default threshold": st.column_config.NumberColumn("Default threshold", format="%.3f"),
        "created": st.column_config.TextColumn("Created (UTC)"),
        "folder": None,
    },
)
if len(found) > 1:
    paths = [str(v.path) for v in found]
    choice = st.selectbox(
        "Serve predictions with",
        paths,
        index=paths.index(str(current)) if str(current) in paths else 0,
        format_func={str(v.path): v.label for v in found}.get,
        key="hv_models_choice",
    )
    if st.button("Use this version", disabled=choice == str(current)):
        app_state.use_model(choice)
        st.rerun()
st.caption(
    f"Adapted versions are kept in `{versions.adapted_root()}` (set `HEMATOVISION_HOME` to move it); the shipped "
    f"model is never changed."
)

st.header("Adapt to your laboratory")
st.markdown(
    "Stain, camera and magnification differ between laboratories, and the model is less accurate on images unlike its "
    "training data. Give it cells your laboratory has labeled: a **zip of class folders** (`eosinophil/`, "
    "`lymphocyte/`, `monocyte/`, `neutrophil/`; 20 or more per class is a good start) or the **review queue's "
    "decisions** (confirmed and reclassified cells). The model's head is re-fitted and re-calibrated on them, and the "
    "result is saved as a **new version** beside the one in use."
)
source = st.radio(
    "Labeled images from", ["A zip of class folders", "Review decisions"], horizontal=True, key="hv_adapt_source"
)
with st.form("hv_adapt_form"):
    upload = (
        st.file_uploader("Labeled images (.zip of class folders)", type=["zip"], key="hv_adapt_zip")
        if source.startswith("A zip")
        else None
    )
    name = st.text_input(
        "Name of the new version",
        value=f"lab-{dt.date.today():%Y%m%d}",
        key="hv_adapt_name",
        help="Letters, digits, '.', '_' or '-'. Names are never reused.",
    )
    go = st.form_submit_button("Adapt", type="primary")
if go:
    store = None if source.startswith("A zip") else app_state.review_store()
    if source.startswith("A zip") and upload is None:
        st.warning("Upload a zip of class folders first.")
    elif source.startswith("A zip") or store is not None:
        bar = st.progress(0.0, text="Reading the labeled images…")
        attempt = adapting.adapt_version(
            current, name, zip_upload=(upload.name, upload.getvalue()) if upload is not None else None, store=store,
            progress=lambda k, n: bar.progress(k / n, text=f"Features of labeled image {k} of {n}"),
        )
        if not attempt.ok:
            bar.empty()
            st.error(attempt.error, icon="🚫")
        else:
            bar.progress(1.0, text="Done")
            app_state.use_model(attempt.outcome.path)
            st.success(attempt.summary)
            if attempt.outcome.note:
                st.warning(attempt.outcome.note)
            if attempt.skipped:
                st.warning(f"{len(attempt.skipped)} file(s) were not used:")
        if attempt.skipped:
            st.dataframe(pd.DataFrame(attempt.skipped, columns=["file", "reason"]), hide_index=True)
        if attempt.ok:
            st.button("Show the new version in the table")

"""Model versions: see the shipped model and lab-adapted versions, switch between them, adapt a new one."""

import datetime as dt

import pandas as pd
import streamlit as st

from hematovision.app import state as app_state
from hematovision.data.labeled import labeled_from_zip
from hematovision.modeling import persistence, versions
from hematovision.training.adapt import AdaptConfig, adapt_labeled, labeled_from_reviews

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
    "`lymphocyte/`, "
    "`monocyte/`, `neutrophil/`; 20 or more per class is a good start) or the **review queue's decisions** (confirmed "
    "and "
    "reclassified cells). The model's head is re-fitted and re-calibrated on them, and the result is saved as a **new "
    "version** beside the one in use."
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
    base_card = persistence.load_card(current)
    labeled = None
    if source.startswith("A zip"):
        if upload is None:
            st.warning("Upload a zip of class folders first.")
        else:
            labeled, origin = labeled_from_zip(upload.name, upload.getvalue(), base_card.classes), upload.name
    else:
        store = app_state.review_store()
        if store is not None:
            labeled, origin = labeled_from_reviews(store, base_card.classes), f"review decisions ({store.path})"
    if labeled is not None:
        bar = st.progress(0.0, text="Reading the labeled images…")
        try:
            res = adapt_labeled(current, labeled, name.strip(), cfg=AdaptConfig(), source=origin,
                                progress=lambda k, n: bar.progress(k / n, text=f"Features of labeled image {k} of {n}"))
        except (ValueError, FileExistsError) as exc:
            bar.empty()
            st.error(str(exc), icon="🚫")
            if labeled.skipped:
                st.dataframe(pd.DataFrame(labeled.skipped, columns=["file", "reason"]), hide_index=True)
        else:
            bar.progress(1.0, text="Done")
            app_state.use_model(res.path)
            st.success(
                f"**{res.version}** saved and now in use: adapted from `{res.parent}` on {sum(res.counts.values())} "
                f"images "
                f"({', '.join(f'{c} {n}' for c, n in res.counts.items())}) in {res.seconds:.0f} s. Cross-fitted "
                f"accuracy "
                f"{res.crossfit_accuracy:.1%}; temperature {res.temperature:.3f}; default threshold "
                f"{res.threshold:.3f}."
            )
            if res.note:
                st.warning(res.note)
            if res.skipped:
                st.warning(f"{len(res.skipped)} file(s) were not used:")
                st.dataframe(pd.DataFrame(res.skipped, columns=["file", "reason"]), hide_index=True)
            st.button("Show the new version in the table")

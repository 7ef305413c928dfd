"""Model versions: see the shipped model and lab-adapted versions, switch between them, adapt a new one."""

import datetime as dt

import pandas as pd
import streamlit as st

from hematovision.app import adapting, display
from hematovision.app import state as app_state
from hematovision.modeling import persistence, versions

LAST_ADAPT = "hv_adapt_last"

st.title("Model versions")
app_state.disclaimer()

found = versions.list_versions()
current = app_state.model_path()
cards = [persistence.load_card(v.path) for v in found]
st.dataframe(
    display.versions_rows(found, cards, str(current), st.context.timezone),
    hide_index=True,
    width="stretch",
    column_config={
        "in use": st.column_config.CheckboxColumn("In use", width="small"),
        "version": st.column_config.TextColumn("Version", width="medium"),
        "kind": st.column_config.TextColumn("Kind", width="small"),
        "adapted from": st.column_config.TextColumn("Adapted from"),
        "labeled images": st.column_config.TextColumn(
            "Labeled images", help="Images of your laboratory it was adapted on"
        ),
        "cross-fitted accuracy": st.column_config.TextColumn(
            "Cross-fitted accuracy", help="Each labeled image scored by a head fitted without it"
        ),
        "default threshold": st.column_config.TextColumn("Default threshold"),
        "created": st.column_config.TextColumn("Created", width="medium", help="In your browser's time zone"),
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
    st.button(
        "Use this version",
        disabled=choice == str(current),
        on_click=app_state.use_model,
        args=(choice,),
        help="Its own default threshold comes with it (sidebar).",
    )
st.caption(
    f"Adapted versions are kept in `{versions.adapted_root()}` (set `HEMATOVISION_HOME` to move it); the shipped "
    f"model is never changed."
)

st.header("Adapt to your laboratory")
st.markdown(
    "Stain, camera and magnification differ between laboratories, and the model is less accurate on images unlike its "
    "training data. Give it cells your laboratory has labeled: a **zip of class folders** (`eosinophil/`, "
    "`lymphocyte/`, `monocyte/`, `neutrophil/`; 20 or more per class is a good start) or the **review queue's "
    "decisions** (confirmed and reclassified cells of every batch; the Review page adapts from one batch's). "
    "The model's top layers are fine-tuned on them, kept close to the shipped weights, and re-calibrated (about a "
    "minute for 80 cells on two cores); the result is saved as a **new version** beside the one in use. Then the "
    "unfamiliar-cell check is refitted for it from the training images under the data root, when they are there."
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
    st.session_state.pop(LAST_ADAPT, None)
    store = None if source.startswith("A zip") else app_state.review_store()
    if source.startswith("A zip") and upload is None:
        st.warning("Upload a zip of class folders first.")
    elif source.startswith("A zip") or store is not None:
        bar = st.progress(0.0, text="Reading the labeled images…")
        attempt = adapting.adapt_version(
            current, name, zip_upload=(upload.name, upload.getvalue()) if upload is not None else None, store=store,
            progress=lambda k, n: bar.progress(k / n, text=f"Features of labeled image {k} of {n}"),
            refit_progress=lambda what, k, n: bar.progress(
                k / n, text=f"Refitting the unfamiliar-cell check: {what}, {k} of {n}"),
        )
        if not attempt.ok:
            bar.empty()
            st.error(attempt.error, icon="🚫")
            if attempt.skipped:
                st.dataframe(pd.DataFrame(attempt.skipped, columns=["file", "reason"]), hide_index=True)
        else:
            bar.progress(1.0, text="Done")
            st.session_state[LAST_ADAPT] = attempt  # shown (with the choice to use it) until dismissed
            st.rerun()  # so the table above lists the new version

last = st.session_state.get(LAST_ADAPT)
if last is not None:
    in_use = str(app_state.model_path()) == str(last.outcome.path)
    st.success(last.message(in_use), icon="✅")
    if last.trust_text:
        (st.info if last.trust.fitted else st.warning)(last.trust_text)
    if last.outcome.note:
        st.warning(last.outcome.note)
    if last.skipped:
        st.warning(f"{len(last.skipped)} file(s) were not used:")
        st.dataframe(pd.DataFrame(last.skipped, columns=["file", "reason"]), hide_index=True)
    b1, b2, _ = st.columns([2, 1, 2])
    if not in_use:
        b1.button(
            f"Use {last.outcome.version} now",
            type="primary",
            key="hv_adapt_use",
            on_click=app_state.use_model,
            args=(last.outcome.path,),
            help="Predictions, flags and review decisions then come from this version; the sidebar threshold "
                 "becomes its default. You can switch back at any time.",
        )
    b2.button("Dismiss", key="hv_adapt_dismiss", on_click=lambda: st.session_state.pop(LAST_ADAPT, None))

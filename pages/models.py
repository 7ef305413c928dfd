"""Model versions: see the shipped model and lab-adapted versions, switch between them, adapt a new one."""

import datetime as dt

import pandas as pd
import streamlit as st

from hematovision import app_state, display, persistence, versions
from hematovision.adapt import AdaptConfig, adapt_labeled, labeled_from_reviews
from hematovision.evaluation import labeled_from_zip

LAST_ADAPT = "hv_adapt_last"

st.title("Model versions")
app_state.disclaimer()

found = versions.list_versions()
current = app_state.model_path()
cards = [persistence.load_card(v.path) for v in found]
st.dataframe(
    display.versions_rows(found, cards, str(current), st.context.timezone), hide_index=True, width="stretch",
    column_config={
        "in use": st.column_config.CheckboxColumn("In use", width="small"),
        "version": st.column_config.TextColumn("Version", width="medium"),
        "kind": st.column_config.TextColumn("Kind", width="small"),
        "adapted from": st.column_config.TextColumn("Adapted from"),
        "labeled images": st.column_config.TextColumn("Labeled images", help="Images of your laboratory it was adapted on"),
        "cross-fitted accuracy": st.column_config.TextColumn("Cross-fitted accuracy", help="Each labeled image scored by a head fitted without it"),
        "default threshold": st.column_config.TextColumn("Default threshold"),
        "created": st.column_config.TextColumn("Created", width="medium", help="In your browser's time zone"),
        "folder": None,
    },
)
if len(found) > 1:
    paths = [str(v.path) for v in found]
    choice = st.selectbox("Serve predictions with", paths, index=paths.index(str(current)) if str(current) in paths else 0,
                          format_func={str(v.path): v.label for v in found}.get, key="hv_models_choice")
    st.button("Use this version", disabled=choice == str(current), on_click=app_state.use_model, args=(choice,),
              help="Its own default threshold comes with it (sidebar).")
st.caption(f"Adapted versions are kept in `{versions.adapted_root()}` (set `HEMATOVISION_HOME` to move it); the shipped model is never changed.")

st.header("Adapt to your laboratory")
st.markdown(
    "Stain, camera and magnification differ between laboratories, and the model is less accurate on images unlike its "
    "training data. Give it cells your laboratory has labeled: a **zip of class folders** (`eosinophil/`, `lymphocyte/`, "
    "`monocyte/`, `neutrophil/`; 20 or more per class is a good start) or the **review queue's decisions** (confirmed and "
    "reclassified cells). The model's head is re-fitted and re-calibrated on them, and the result is saved as a **new "
    "version** beside the one in use."
)
source = st.radio("Labeled images from", ["A zip of class folders", "Review decisions"], horizontal=True, key="hv_adapt_source")
with st.form("hv_adapt_form"):
    upload = st.file_uploader("Labeled images (.zip of class folders)", type=["zip"], key="hv_adapt_zip") if source.startswith("A zip") else None
    name = st.text_input("Name of the new version", value=f"lab-{dt.date.today():%Y%m%d}", key="hv_adapt_name",
                         help="Letters, digits, '.', '_' or '-'. Names are never reused.")
    go = st.form_submit_button("Adapt", type="primary")
if go:
    st.session_state.pop(LAST_ADAPT, None)
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
            st.session_state[LAST_ADAPT] = res  # shown (with the choice to use it) until dismissed
            st.rerun()  # so the table above lists the new version

last = st.session_state.get(LAST_ADAPT)
if last is not None:
    in_use = str(app_state.model_path()) == str(last.path)
    st.success(
        f"**{last.version}** saved: adapted from `{last.parent}` on {sum(last.counts.values())} images "
        f"({', '.join(f'{c} {n}' for c, n in last.counts.items())}) in {last.seconds:.0f} s. Cross-fitted accuracy "
        f"{last.crossfit_accuracy:.1%}; temperature {last.temperature:.3f}; default threshold {display.threshold_text(last.threshold)}. "
        + ("It is now in use." if in_use else "It is in the table above; the model in use has not changed."), icon="✅")
    if last.note:
        st.warning(last.note)
    if last.skipped:
        st.warning(f"{len(last.skipped)} file(s) were not used:")
        st.dataframe(pd.DataFrame(last.skipped, columns=["file", "reason"]), hide_index=True)
    b1, b2, _ = st.columns([2, 1, 2])
    if not in_use:
        b1.button(f"Use {last.version} now", type="primary", key="hv_adapt_use", on_click=app_state.use_model, args=(last.path,),
                  help="Predictions, flags and review decisions then come from this version; the sidebar threshold "
                       "becomes its default. You can switch back at any time.")
    b2.button("Dismiss", key="hv_adapt_dismiss", on_click=lambda: st.session_state.pop(LAST_ADAPT, None))

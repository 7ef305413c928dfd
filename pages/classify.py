"""Classify page: upload images (or zips), see one row per image, filter, summarise, download.

Thin by design: caching, filtering and summaries live in ``hematovision.app.batching``, the table's
columns, the figures and reviews from the detail view in ``hematovision.app.results``.
"""

import streamlit as st

from hematovision.app import batching, results, samples
from hematovision.app import fields as field_view
from hematovision.app import state as app_state
from hematovision.config import data_root
from hematovision.imaging.decode import decode_image
from hematovision.review import store as review

IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "zip"]

st.title("🔬 Classify white blood cells")
app_state.disclaimer()

clf = app_state.get_classifier()
if clf is None:
    st.info(
        "Train a model with `python -m hematovision train`, or set `HEMATOVISION_MODEL` to a model folder, then "
        "reload this page."
    )
    st.stop()

classes = list(clf.classes_)
threshold = app_state.threshold()
if field_view.mode_toggle() == "Whole fields":  # every white cell of a field: hematovision/app/fields.py
    field_view.render(clf, threshold, app_state.review_store())
    st.stop()
cache: batching.ResultCache = st.session_state.setdefault("hv_cache", batching.ResultCache())
batch: batching.Batch = st.session_state.setdefault("hv_batch", batching.Batch())


def _on_upload() -> None:
    files = st.session_state.get("hv_uploader") or []
    batch.set_uploaded([(f.name, f.getvalue()) for f in files])


st.file_uploader(
    "Images of single white blood cells (JPEG, PNG, BMP, TIFF) or zip archives of them",
    type=IMAGE_TYPES, accept_multiple_files=True, key="hv_uploader", on_change=_on_upload,
    help="Each image gets one row. Files that cannot be read get an error row; the rest are still classified.",
)
c1, c2, _ = st.columns([1, 1, 3])
if c1.button(
    "Load sample images",
    help="32 held-out test images (Kaggle TEST and PBC test split), listed in sample_data/manifest.csv",
):
    note = results.load_samples(batch, data_root())  # what is missing, if anything
    if note:
        st.warning(note)
if batch and c2.button("Clear results"):
    batch.clear()
    st.rerun()

if not batch:
    st.info("Upload images or load the sample images to start.")
    st.stop()
if batch.uploaded and not st.session_state.get("hv_uploader"):
    st.caption(
        f"Showing your last upload ({len(batch.uploaded)} files). Upload new files to replace it, or press *Clear "
        f"results*."
    )

entries = batch.entries()
todo = len(batching.pending(entries, cache, clf.version))
if todo:
    bar = st.progress(0.0, text=f"Classifying {todo} new image(s)…")
    batching.classify_pending(clf, entries, cache, threshold,
                              progress=lambda d, t: bar.progress(d / t, text=f"Classified {d} of {t}"))
    bar.empty()

preds, thumbs = batching.assemble(entries, cache, clf.version)
frame = batching.results_frame(preds, thumbs, classes, threshold)
# Flagged predictions go to the review queue (SQLite); decisions made there come back as columns.
store = app_state.review_store()
if store is not None:
    app_state.queue_batch_for_review(store, clf, threshold)
frame, decisions = results.with_decisions(frame, store, clf.version)

# ---------------------------------------------------------------- summary
summary = batching.summarise(frame, classes)
st.subheader("Summary")
m = st.columns(5)
m[0].metric("Images", summary.n_images)
m[1].metric("Classified", summary.n_classified)
m[2].metric("Flagged for review", summary.n_flagged, help=f"Confidence below the threshold {threshold:.3f} (sidebar)")
m[3].metric(
    "Reviewed",
    summary.n_reviewed,
    help="Confirmed or corrected by a person (Review page or the detail view below). "
    "Counts use the final class: the reviewed one where there is one.",
)
m[4].metric("Errors", summary.n_errors)
if summary.n_unusable:
    st.caption(f"{summary.n_unusable} image(s) reviewed as not a white cell / unusable: left out of the differential.")
s1, s2 = st.columns([2, 3])
s1.dataframe(summary.differential, hide_index=True, column_config={
    "class": st.column_config.TextColumn("Class"),
    "count": st.column_config.NumberColumn("Count"),
    "percent": st.column_config.NumberColumn("Percent", format="%.1f%%"),
})
s2.plotly_chart(results.differential_figure(summary.differential), width="stretch")

# ---------------------------------------------------------------- filters + table
st.subheader("Results")
f1, f2, f3, f4 = st.columns([3, 1, 1, 2])
# Defaults go into session state (not the widgets), so Home.py can keep them across page switches.
app_state.init_state(
    {"hv_filter_classes": list(classes), "hv_flagged_only": False, "hv_show_errors": True, "hv_conf_range": (0.0, 1.0)}
)
chosen = f1.multiselect("Predicted class", classes, key="hv_filter_classes")
flagged_only = f2.checkbox("Flagged only", key="hv_flagged_only")
show_errors = f3.checkbox("Show errors", key="hv_show_errors")
conf = f4.slider("Confidence range", 0.0, 1.0, step=0.01, key="hv_conf_range")
view = batching.filter_frame(frame, batching.Filters(tuple(chosen), flagged_only, tuple(conf), show_errors))
st.caption(f"{len(view)} of {len(frame)} rows shown · threshold {threshold:.3f} · model `{clf.version}`")

col_cfg, order = results.table_columns(classes)
st.dataframe(view, column_config=col_cfg, column_order=order, hide_index=True, width="stretch")

# ---------------------------------------------------------------- download
scope = st.radio("Rows to download", ["Filtered rows", "All rows"], horizontal=True, key="hv_download_scope")
out = view if scope == "Filtered rows" else frame
st.download_button(
    f"Download CSV ({len(out)} rows)", batching.csv_report(out, classes, threshold, clf.version),
    file_name="hematovision_predictions.csv", mime="text/csv", on_click="ignore",
)

# ---------------------------------------------------------------- detail
st.subheader("Detail")
ok_rows = [i for i in view.index if not view.at[i, "error"]]
if not ok_rows:
    st.info("No classified image among the rows shown.")
    st.stop()
pick = st.selectbox("Image", ok_rows, format_func=lambda i: frame.at[i, "file"], key="hv_detail")
d1, d2 = st.columns([1, 1])
sha = frame.at[pick, "sha256"]
try:
    rgb = decode_image(entries[pick].data).rgb
except Exception as exc:  # shown as text, never as a traceback
    rgb = None
    d1.warning(f"Could not display this image ({type(exc).__name__}).")
if rgb is not None:
    app_state.init_state({"hv_detail_gradcam": False})
    show_cam = d1.toggle(
        "Grad-CAM heat map",
        key="hv_detail_gradcam",
        help="Where the model looked for the predicted class (red: most evidence). Loads TensorFlow the first time.",
    )
    shown, captions, cam_warning = results.detail_images(clf, sha, rgb, frame.at[pick, "file"], show_cam)
    if cam_warning:
        d1.warning(cam_warning)
    d1.image(shown, caption=captions, width=260 if show_cam else "stretch")
d2.plotly_chart(results.probability_figure(frame, pick, classes), width="stretch")
truth = samples.labels().get(frame.at[pick, "file"]) if batch.samples else None
if truth:
    d2.caption(f"Sample image; class given by the dataset: **{truth}**")
if frame.at[pick, "flagged"]:
    d2.warning("Confidence below the review threshold: a person should check this one.")

# ---------------------------------------------------------------- review from the detail view (flagged or not)
if store is not None:
    current = decisions.get(sha)
    with d2.form("hv_detail_review", clear_on_submit=True, border=True):
        st.markdown(
            "**Review this image**"
            + (f" — currently **{current.reviewed_class}** by {current.reviewer or 'anonymous'}" if current else "")
        )
        choices = classes + [review.UNUSABLE]
        verdict = st.selectbox(
            "Reviewed class",
            choices,
            index=choices.index(frame.at[pick, "predicted_class"]),
            format_func=lambda c: "not a white cell / unusable" if c == review.UNUSABLE else c,
            key=f"hv_detail_class_{sha[:16]}",
        )
        who = st.text_input("Reviewer", value=st.session_state.get("hv_reviewer", ""), key="hv_detail_reviewer")
        note = st.text_input("Note (optional)", key="hv_detail_note")
        if st.form_submit_button("Save review"):
            results.save_review(store, preds[pick], entries[pick].data, frame.at[pick, "flagged"], classes, clf.version,
                                threshold, verdict, who, note)
            st.session_state["hv_reviewer"] = who
            st.rerun()

"""Classify page: upload images (or zips), see one row per image, filter, summarise, download.

Thin by design: caching, filtering and summaries live in ``hematovision.app.batching``, the table's
columns, the figures and reviews from the detail view in ``hematovision.app.results``.
"""

import streamlit as st

from hematovision.app import adapting, batching, display, results, samples
from hematovision.app import fields as field_view
from hematovision.app import report_views as report_ui
from hematovision.app import state as app_state
from hematovision.config import data_root
from hematovision.imaging.decode import decode_image
from hematovision.reports import hold_frame
from hematovision.review import store as review
from hematovision.serving import BATCH_SHIFT
from hematovision.trust import banner_text, frame_shift

IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "zip"]
#: Measured (docs/dashboard-benchmarks.md): the browser sends separate files one request at a time and
#: slows as the list grows, while a zip is one request. Above this many files the page says so.
MANY_FILES = 200

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


def _uploader_key() -> str:
    # A new key empties the uploader: loading the samples or clearing must not leave old files showing there.
    return f"hv_uploader_{st.session_state.get('hv_uploader_gen', 0)}"


def _reset_uploader() -> None:
    st.session_state["hv_uploader_gen"] = st.session_state.get("hv_uploader_gen", 0) + 1


def _on_upload() -> None:
    files = st.session_state.get(_uploader_key()) or []
    batch.set_uploaded([(f.name, f.getvalue()) for f in files])  # a new upload is a new batch


def _load_samples() -> None:
    # The samples replace an upload (never mixed with it); what is missing, if anything, is said on the next run.
    st.session_state["hv_samples_note"] = results.load_samples(batch, data_root())
    if batch.kind == batching.SAMPLES:
        _reset_uploader()


def _clear() -> None:
    batch.clear()
    _reset_uploader()


st.file_uploader(
    "Images of single white blood cells (JPEG, PNG, BMP, TIFF) or zip archives of them",
    type=IMAGE_TYPES, accept_multiple_files=True, key=_uploader_key(), on_change=_on_upload,
    help="Each image gets one row. Files that cannot be read get an error row; the rest are still classified. "
         f"More than {MANY_FILES} images? Put them in one .zip: the browser sends separate files one at a time.",
)
actions = st.container(horizontal=True)  # buttons at their own width: whole labels in a narrow window
actions.button(
    "Load sample images",
    on_click=_load_samples,
    key="hv_load_samples",
    help="32 held-out test images (Kaggle TEST and PBC test split), listed in sample_data/manifest.csv. They replace "
         "an upload.",
)
note = st.session_state.pop("hv_samples_note", "")
if note:
    st.warning(note)
if batch:
    actions.button("Clear results", on_click=_clear, key="hv_clear")

if not batch:
    st.info("Upload images or load the sample images to start.")
    st.stop()
st.info(batch.describe(), icon="🗂️")
if batch.kind == batching.UPLOAD and len(batch.files) > MANY_FILES:
    st.caption(
        f"{len(batch.files)} separate files: next time, upload them as one .zip. The browser sends separate files one "
        "request at a time and slows down as the list grows (about a minute for 1,000 files here); a zip of the same "
        "images is one request."
    )

entries = batch.entries()
todo = len(batching.pending(entries, cache, clf.version))
if todo:
    bar = st.progress(0.0, text=f"Classifying {todo} new image(s)…")
    batching.classify_pending(clf, entries, cache, threshold,
                              # at most ~100 bar updates: each one is a message to the browser
                              progress=lambda d, t: (d == t or d % max(1, t // 100) == 0)
                              and bar.progress(d / t, text=f"Classified {d} of {t}"))
    bar.empty()

preds, thumbs = batching.assemble(entries, cache, clf.version)
frame = batching.results_frame(preds, thumbs, classes, threshold)
shift = frame_shift(frame, clf.trust)  # the batch verdict: when it fires, the whole batch is held for review
if shift.detected:
    frame = hold_frame(frame)
# Flagged predictions go to the review queue (SQLite); decisions made there come back as columns.
store = app_state.review_store()
if store is not None:
    app_state.queue_batch_for_review(store, clf, threshold)
frame, decisions = results.with_decisions(frame, store, clf.version)

# ---------------------------------------------------------------- summary
summary = batching.summarise(frame, classes)
st.subheader("Summary")
m = st.columns(3) + st.columns(3)  # two rows of three: whole labels in a narrow window too
m[0].metric("Images", summary.n_images)
m[1].metric("Classified", summary.n_classified)
m[2].metric(
    "Flagged for review",
    summary.n_flagged,
    help=f"Confidence below the threshold {display.threshold_text(threshold)} (sidebar), or unfamiliar; every "
    "classified image when the batch looks unlike the training images (the warning below)",
)
m[3].metric(
    "Reviewed",
    summary.n_reviewed,
    help="Confirmed or corrected by a person (Review page or the detail view below). "
    "Counts use the final class: the reviewed one where there is one.",
)
m[4].metric("Errors", summary.n_errors)
m[5].metric(
    "Unidentified",
    summary.n_unidentified,
    help=display.UNIDENTIFIED_HELP,
)
if shift.detected:
    st.warning(banner_text(shift, held=True), icon="⚠️")
    if store is not None and st.button(
        f"Review a sample of this batch (up to {batching.SAMPLE_PER_CLASS} per predicted class)",
        key="hv_review_sample",
        help="Puts a balanced sample (each predicted class, its whole confidence range) on the Review page's list, "
        "named by this batch. Reviewed cells can then adapt the model (Model versions page, from reviews).",
    ):
        sample = batching.review_sample(entries, cache, clf.version, classes)
        n = results.send_sample_to_review(store, sample, classes, clf.version, threshold, batch=batch.id)
        adapting.warm_for_adaptation(clf.model_dir, data_root())  # the adaptation that may follow, made ready
        st.success(f"{len(sample)} cells on the review list ({n} newly queued): open the Review page.")
if summary.n_unusable:
    st.caption(f"{summary.n_unusable} image(s) reviewed as not a white cell / unusable: left out of the differential.")
s1, s2 = st.columns([4, 3])
s1.dataframe(summary.differential, hide_index=True, column_config=results.differential_columns())
s2.plotly_chart(results.differential_figure(summary.differential), width="stretch")
by_version = batching.differential_by_version(entries, cache, classes, threshold)
if by_version["version"].nunique() > 1:  # classified again with another version (e.g. one adapted from reviews)
    with st.expander("Differential of this batch by model version (before / after)", expanded=True):
        st.dataframe(by_version.pivot(index="class", columns="version", values="percent").round(1), width="stretch")
        unidentified = by_version.groupby("version", sort=False)["unidentified"].first()
        st.caption("Percent of the machine's classes (unreviewed; unfamiliar cells left out). Unidentified per "
                   "version: " + ", ".join(f"{v}: {n}" for v, n in unidentified.items()))

# ---------------------------------------------------------------- filters + table
st.subheader("Results")
# Defaults go into session state (not the widgets), so Home.py can keep them across page switches.
app_state.init_state(
    {"hv_filter_classes": list(classes), "hv_flagged_only": False, "hv_show_errors": True, "hv_conf_range": (0.0, 1.0),
     "hv_unidentified_only": False}
)
chosen = st.pills("Predicted class", classes, selection_mode="multi", key="hv_filter_classes")
checks = st.container(horizontal=True)  # each checkbox at its own width: whole labels in a narrow window
flagged_only = checks.checkbox("Flagged only", key="hv_flagged_only")
unidentified_only = checks.checkbox("Unidentified only", key="hv_unidentified_only", help="Unfamiliar cells only")
show_errors = checks.checkbox("Show errors", key="hv_show_errors")
conf = st.slider("Confidence range", 0.0, 1.0, step=0.01, key="hv_conf_range", width=400)
view = batching.filter_frame(
    frame, batching.Filters(tuple(chosen or ()), flagged_only, tuple(conf), show_errors, unidentified_only)
)
st.caption(
    f"{len(view)} of {len(frame)} rows shown · threshold {display.threshold_text(threshold)} · model `{clf.version}`"
)

col_cfg, order = results.table_columns(classes)
st.dataframe(results.table_rows(view, st.context.timezone), column_config=col_cfg, column_order=order,
             hide_index=True, width="stretch", row_height=60)

# ---------------------------------------------------------------- download
scope = st.radio("Rows to download", ["Filtered rows", "All rows"], horizontal=True, key="hv_download_scope")
out = view if scope == "Filtered rows" else frame
st.download_button(
    f"Download CSV ({len(out)} rows)", batching.csv_report(out, classes, threshold, clf.version),
    file_name="hematovision_predictions.csv", mime="text/csv", on_click="ignore",
)

# ------------------------------------------------------- report (PDF) and gallery: hematovision.app.report_views
batch_images = {e.sha256: e.data for e in entries if e.data}
report_ui.report_download(frame, clf, threshold, batch_images)
if st.toggle("Gallery view: the rows shown, as cells grouped by class", key="hv_gallery_view"):
    report_ui.classify_gallery(view, clf, batch_images, detail_key="hv_detail")

# ---------------------------------------------------------------- detail
st.subheader("Detail")
ok_rows = [i for i in view.index if not view.at[i, "error"]]
if not ok_rows:
    st.info("No classified image among the rows shown.")
    st.stop()
# Keyed by the image (its content hash), never by row position: filters and the threshold reorder rows.
names = {}
for i in ok_rows:
    names.setdefault(frame.at[i, "sha256"], frame.at[i, "file"])
if st.session_state.get("hv_detail") not in names:
    st.session_state["hv_detail"] = next(iter(names))
sha = st.selectbox("Image", list(names), format_func=names.get, key="hv_detail")
pick = next(i for i in ok_rows if frame.at[i, "sha256"] == sha)
d1, d2 = st.columns([1, 1])
try:
    rgb = decode_image(batching.image_of(entries, sha)).rgb
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
    shown, captions, cam_warning = results.detail_images(clf, sha, rgb, names[sha], show_cam)
    if cam_warning:
        d1.warning(cam_warning)
    d1.image(shown, caption=captions, width=260 if show_cam else "stretch")
d2.plotly_chart(results.probability_figure(frame, pick, classes), width="stretch")
truth = samples.labels().get(frame.at[pick, "file"]) if batch.samples else None
if truth:
    d2.caption(f"Sample image; class given by the dataset: **{truth}**")
if frame.at[pick, "flag_reason"] == "unfamiliar":
    d2.warning("Unfamiliar: unlike the images the model was trained on (not a white cell, or another laboratory's "
               "stain or camera). Left out of the differential until a person classifies it.")
elif frame.at[pick, "flag_reason"] == BATCH_SHIFT:
    d2.warning("Held with its batch: this batch looks unlike the training images (the warning above), so no "
               "prediction in it is accepted without a person's check.")
elif frame.at[pick, "flagged"]:
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
            results.save_review(store, preds[pick], batching.image_of(entries, sha), frame.at[pick, "flagged"], classes,
                                clf.version, threshold, verdict, who, note, batch=batch.id)
            st.session_state["hv_reviewer"] = who
            st.rerun()
    if current is None and results.on_review_list(store, sha, clf.version, threshold):
        d2.caption("This image is on the review list (Review page).")
    elif current is None:
        d2.button(
            "Send to the review list",
            key="hv_detail_send",
            on_click=results.send_to_review,
            args=(store, preds[pick], batching.image_of(entries, sha), frame.at[pick, "flagged"], classes, clf.version,
                  threshold),
            kwargs={"batch": batch.id},
            help="Put this image on the Review page's list whatever its confidence, for a person to check.",
        )

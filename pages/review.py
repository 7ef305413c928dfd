"""Review page: flagged predictions, one at a time, confirmed or corrected by a person.

Thin by design: the queue, decisions and filters live in ``hematovision.review.store``
(SQLite, so decisions survive reloads and restarts); Grad-CAM in ``hematovision.serving.gradcam``.
"""

from dataclasses import replace

import plotly.express as px
import streamlit as st

from hematovision.app import adapting, batching, display
from hematovision.app import report_views as report_ui
from hematovision.app import state as app_state
from hematovision.imaging.decode import decode_image
from hematovision.review import store as review

st.title("🧑‍🔬 Review queue")
app_state.disclaimer()

store = app_state.review_store()
if store is None:
    st.stop()
clf = app_state.get_classifier()
threshold = app_state.threshold()
if clf is not None:
    app_state.queue_batch_for_review(store, clf, threshold)

versions = store.model_versions()
if not versions:
    st.info("Nothing to review yet. Predictions flagged on the **Classify** page (confidence below the "
            "review threshold) appear here, from this and earlier sessions.")
    st.stop()

# ---------------------------------------------------------------- filters
STATUS = {
    "All": "all",
    "Unreviewed": "unreviewed",
    "Reviewed": "reviewed",
    "Reclassified": "reclassified",
    "Not a white cell / unusable": "unusable",
}
default_version = clf.version if clf is not None and clf.version in versions else versions[-1]
# Grad-CAM on request only: it takes seconds an image on a CPU, and a decision must take under one.
app_state.init_state({"hv_review_status": "All", "hv_review_version": default_version, "hv_review_gradcam": False})
if st.session_state["hv_review_version"] not in versions:
    st.session_state["hv_review_version"] = default_version
f1, f2, f3 = st.columns([2, 3, 2])
version = f1.selectbox(
    "Model version",
    versions,
    key="hv_review_version",
    help="Decisions are kept per image and per model version: a new model's predictions are reviewed again.",
)
everything = store.items(version)
classes = list(everything[0].classes) if everything else []
app_state.init_state({"hv_review_classes": classes + [review.UNUSABLE]})
st.session_state["hv_review_classes"] = [
    c for c in st.session_state["hv_review_classes"] if c in classes + [review.UNUSABLE]
]
status = f3.selectbox("Show", list(STATUS), key="hv_review_status")
chosen = f2.multiselect("Class (predicted or reviewed)", classes + [review.UNUSABLE], key="hv_review_classes")
# Pending = flagged at the current threshold (sidebar) or sent on purpose; decided items always stay.
batches = sorted({it.batch for it in review.select(everything, "all", threshold=threshold) if it.batch}, reverse=True)
ALL_BATCHES = "All batches"
if st.session_state.get("hv_review_batch") not in [ALL_BATCHES, *batches]:
    st.session_state["hv_review_batch"] = ALL_BATCHES
b1, b2 = st.columns([3, 2], vertical_alignment="bottom")
picked = b1.selectbox("Batch", [ALL_BATCHES, *batches], key="hv_review_batch",
                      help="The Classify page's batch an image came from: an upload, or the sample images.")
batch_id = None if picked == ALL_BATCHES else picked
queue = review.select(everything, "all", threshold=threshold, batch=batch_id)
shown = review.select(everything, STATUS[status], chosen, threshold=threshold, batch=batch_id)
n_pending = sum(it.decision is None for it in queue)
if batch_id is not None and n_pending:
    def _clear_batch(b=batch_id, v=version) -> None:
        n = store.dismiss(b, v)
        st.session_state["hv_review_cleared"] = (
            f"{n} pending item(s) of “{b}” cleared; decisions already made are kept."
        )

    b2.button(f"Clear this batch's {n_pending} pending item(s)", key="hv_review_clear", on_click=_clear_batch,
              help="They leave the review list; images already reviewed, and every decision, stay.")
if "hv_review_cleared" in st.session_state:
    st.success(st.session_state.pop("hv_review_cleared"))
n_decided = sum(it.decision is not None for it in queue)
if batch_id is not None and n_decided:  # the guided path (issue 19): these reviews -> an adapted version -> Classify
    labeled, _ = adapting.labeled_images(app_state.model_path(), store=store, batch=batch_id, model_version=version)
    n_used = len(labeled.inputs)
    left_out = f"; {n_decided - n_used} marked unusable, left out" if n_decided > n_used else ""
    with st.expander(f"Adapt from these reviews ({n_used} reviewed in this batch{left_out})"):
        with st.form("hv_review_adapt"):
            name = st.text_input("Name of the new version", key="hv_review_adapt_name", placeholder="e.g. lab-a")
            go = st.form_submit_button("Adapt from these reviews", type="primary",
                                       help=f"A version adapted to your laboratory from this batch's {n_used} "
                                       "reviewed cells only (decisions on other batches are not used), then used "
                                       "at once: the Classify page classifies the batch again with it and shows "
                                       "the differential before and after.")
        if go:
            bar = st.progress(0.0, text="Reading the reviewed images…")
            attempt = adapting.adapt_version(
                app_state.model_path(), name, store=store, batch=batch_id, model_version=version,
                progress=lambda k, n: bar.progress(k / n, text=f"Features of reviewed image {k} of {n}"),
                refit_progress=lambda what, k, n: bar.progress(
                    k / n, text=f"Refitting the unfamiliar-cell check: {what}, {k} of {n}"),
            )
            bar.empty()
            if attempt.ok:
                app_state.use_model(attempt.outcome.path)
                st.success(attempt.message(True) + " Open the Classify page: the batch is classified again with it, "
                           "with the differential before and after.", icon="✅")
                if attempt.trust_text:
                    (st.info if attempt.trust.fitted else st.warning)(attempt.trust_text)
            else:
                st.error(attempt.error, icon="🚫")
elif batch_id is None and any(it.decision is not None for it in everything):
    st.caption("To adapt the model from reviews, pick a batch above (its decisions only), or adapt from every "
               "review decision on the **Model versions** page.")
st.caption(
    f"On the list: images flagged at the threshold {display.threshold_text(threshold)} (sidebar) or sent to review "
    "on purpose, and every image already reviewed. Lower the threshold and an unreviewed image that is no longer "
    "flagged leaves the list."
)

prog = review.progress(queue)
st.progress(prog.reviewed / prog.total if prog.total else 1.0, text=prog.text)
if not shown:
    st.info("No item matches these filters.")
else:
    keys = [it.key for it in shown]
    current = st.session_state.get("hv_review_current")
    if current not in keys:
        current = shown[review.next_index(shown, -1)].key if any(i.decision is None for i in shown) else keys[0]
        st.session_state["hv_review_current"] = current
    pos = keys.index(current)
    item = shown[pos]

    def _go(key) -> None:
        st.session_state["hv_review_current"] = key

    def _decide(it: review.Item, reviewed_class: str, at: int, items: list) -> None:
        store.decide(it.sha256, it.model_version, reviewed_class, st.session_state.get("hv_reviewer", ""),
                     st.session_state.get("hv_review_note", ""))
        st.session_state["hv_review_note"] = ""
        done = review.Decision(it.sha256, it.model_version, it.predicted_class, reviewed_class)
        marked = [replace(x, decision=done) if k == at else x for k, x in enumerate(items)]
        st.session_state["hv_review_current"] = marked[review.next_index(marked, at)].key

    st.markdown(f"**{pos + 1} of {len(shown)}** shown · `{display.short_name(item.file)}` · status: **{item.status}**")

    # ------------------------------------------------------------ the image, what the model saw, its probabilities
    batch = st.session_state.get("hv_batch")
    original = batching.image_of(batch.entries(), item.sha256) if batch else None
    source = "original" if original else "thumbnail"
    data = original or store.thumbnail(item.sha256, item.model_version)
    c1, c2, c3 = st.columns([2, 2, 3])
    rgb = None
    if data:
        try:
            rgb = decode_image(data).rgb
        except Exception as exc:
            c1.warning(f"Could not display this image ({type(exc).__name__}).")
    else:
        c1.warning("No image stored for this item.")
    if rgb is not None:
        c1.image(rgb, caption="Image" + ("" if source == "original" else " (stored thumbnail)"), width="stretch")
        show_cam = c2.toggle("Grad-CAM heat map", key="hv_review_gradcam")
        if show_cam and clf is not None and clf.version == item.model_version:
            try:
                over, explained = app_state.gradcam_overlay(clf, item.sha256, source, rgb)
                c2.image(over, caption=f"Grad-CAM for '{explained}' (red: most evidence)", width="stretch")
                c2.caption(
                    "Computed from the "
                    + (
                        "original image."
                        if source == "original"
                        else "stored 256-px thumbnail (the original is not kept)."
                    )
                )
            except Exception as exc:  # a heat map is a help, never a reason to lose the page
                c2.warning(f"Grad-CAM unavailable ({type(exc).__name__}: {exc}).")
        elif show_cam:
            c2.caption(f"Grad-CAM needs model `{item.model_version}`, which is not the one loaded.")
    probs = [{"class": c, "probability": float(p)} for c, p in zip(item.classes, item.probabilities)]
    fig = px.bar(probs, x="probability", y="class", orientation="h", range_x=[0, 1], text_auto=".3f",
                 title=f"Predicted: {item.predicted_class} ({item.confidence:.3f})")
    fig.update_layout(height=260, margin=dict(t=40, b=10))
    c3.plotly_chart(fig, width="stretch")
    if item.decision is not None:
        d = item.decision
        c3.success(f"Reviewed: **{d.reviewed_class}** ({d.action}) by {d.reviewer or 'anonymous'}, "
                   f"{display.local_time(d.reviewed_at, st.context.timezone)}"
                   + (f" — {d.note}" if d.note else ""))

    # ------------------------------------------------------------ the decision: one click per image
    st.markdown("**Decision** (recorded at once; the next unreviewed image follows)")
    r1, r2 = st.columns([1, 2])
    r1.text_input("Reviewer", key="hv_reviewer", placeholder="your name or initials")
    r2.text_input("Note (optional)", key="hv_review_note")
    # Fixed places and keys, whatever the prediction: Confirm (Y), Unusable (U), a class (1-4), previous / next
    # (arrows). Buttons sit in wrapping rows, so their labels stay whole on a narrow screen.
    with st.container(horizontal=True):
        st.button(
            f"✓ Confirm {item.predicted_class}",
            key="hv_decide_confirm",
            on_click=_decide,
            shortcut="Y",
            type="primary",
            args=(item, item.predicted_class, pos, shown),
            help="The prediction is right (key Y)",
        )
        st.button(
            "✗ Unusable",
            key="hv_decide_unusable",
            on_click=_decide,
            shortcut="U",
            help="Not a white cell, or an unusable image (key U)",
            args=(item, review.UNUSABLE, pos, shown),
        )
        st.button(
            "◀ Previous", key="hv_review_prev", on_click=_go, args=(keys[(pos - 1) % len(keys)],), shortcut="Left"
        )
        st.button("Next ▶", key="hv_review_next", on_click=_go, args=(keys[(pos + 1) % len(keys)],), shortcut="Right")
    st.caption("Reclassify as:")
    with st.container(horizontal=True):
        for k, c in enumerate(item.classes):
            st.button(
                c,
                key=f"hv_decide_{c}",
                on_click=_decide,
                args=(item, c, pos, shown),
                shortcut=str(k + 1) if k < 9 else None,
                help=f"Record '{c}' (key {k + 1})"
                + (" — the prediction, so this confirms it" if c == item.predicted_class else ""),
            )

    hist = store.history(item.sha256, item.model_version)
    if hist:
        with st.expander(f"History of this image ({len(hist)} decision(s))"):
            st.dataframe(
                [
                    {
                        "reviewed_at": display.local_time(d.reviewed_at, st.context.timezone),
                        "reviewer": d.reviewer,
                        "reviewed_class": d.reviewed_class,
                        "action": d.action,
                        "note": d.note,
                    }
                    for d in hist
                ],
                hide_index=True,
                width="stretch",
                column_config={
                    "reviewed_at": "Reviewed at",
                    "reviewer": "Reviewer",
                    "reviewed_class": "Reviewed as",
                    "action": "Action",
                    "note": "Note",
                },
            )

    # ------------------------------------------------------------ the queue as a table
    st.subheader("Queue")
    st.dataframe(
        [
            {
                "file": display.short_name(it.file),
                "predicted_class": it.predicted_class,
                "confidence": it.confidence,
                "status": it.status,
                "final_class": it.final_class,
                "reviewer": it.decision.reviewer if it.decision else "",
                "reviewed_at": display.local_time(it.decision.reviewed_at, st.context.timezone) if it.decision else "",
            }
            for it in shown
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "file": "File",
            "predicted_class": "Predicted class",
            "status": "Status",
            "final_class": "Final class",
            "reviewer": "Reviewer",
            "reviewed_at": "Reviewed at",
            "confidence": st.column_config.ProgressColumn("Confidence", min_value=0.0, max_value=1.0, format="%.3f"),
        },
    )

    # ------------------------------------------------------------ gallery: hematovision.app.report_views
    if st.toggle("Gallery view: the items shown, as cells grouped by class", key="hv_review_gallery_view"):
        report_ui.review_gallery(shown, lambda it: (batching.image_of(batch.entries(), it.sha256) if batch else None)
                                 or store.thumbnail(it.sha256, it.model_version), clf, current_key="hv_review_current")

# ---------------------------------------------------------------- export
n_decisions = len(store.history())
st.download_button(
    f"Download all reviews (CSV, {n_decisions} decision{'s' if n_decisions != 1 else ''})",
    review.export_csv(store),
    file_name="hematovision_reviews.csv",
    mime="text/csv",
    on_click="ignore",
    disabled=not n_decisions,
    help="Every decision ever recorded (an audit trail); `current` marks the one that counts for each image.",
)
st.caption(f"Decisions are stored in `{store.path}`.")

"""Dashboard glue shared by every page: the model loaded once, the one threshold, the disclaimer.

Streamlit-specific but logic-free: pages call these and draw.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import streamlit as st

from .. import DISCLAIMER
from ..config import model_dir
from ..modeling import persistence, versions
from ..review import store as review
from ..review.store import ReviewDBError, ReviewStore, db_path
from ..serving.classifier import Classifier
from ..serving.gradcam import for_classifier, overlay
from . import batching
from .display import round_threshold

THRESHOLD_KEY = "threshold"
#: Widget values that must survive a switch to another page and back (Streamlit drops
#: the state of widgets a run did not draw, unless it is re-assigned on every run).
PERSISTENT_KEYS = (
    "hv_filter_classes",
    "hv_flagged_only",
    "hv_unidentified_only",
    "hv_show_errors",
    "hv_conf_range",
    "hv_download_scope",
    "hv_reviewer",
    "hv_review_status",
    "hv_review_classes",
    "hv_review_version",
    "hv_review_gradcam",
    "hv_detail_gradcam",
    "hv_review_batch",
)


def keep_widget_state() -> None:
    """Called by ``Home.py`` on every run, whatever the page."""
    for key in PERSISTENT_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def init_state(defaults: dict) -> None:
    """Give widgets their first values through session state (never both ways)."""
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value


@st.cache_resource(show_spinner="Loading the model…")
def _load_classifier(path: str, sha: str):
    return Classifier.load(path)


MODEL_KEY = "hv_model_path"
PICK_KEY = "hv_model_pick"


def model_path() -> Path:
    """The model version this session serves: chosen in the sidebar, else the shipped one."""
    chosen = st.session_state.get(MODEL_KEY)
    return Path(chosen) if chosen and (Path(chosen) / persistence.CARD_FILE).is_file() else model_dir()


#: A threshold to give the sidebar slider at the top of the next run. A widget's value cannot be
#: changed once the widget is drawn in a run, so a switch made mid-page (Model versions) leaves it here.
PENDING_THRESHOLD = "hv_pending_threshold"


def use_model(path: Path) -> None:
    """Switch this session to another model version; its own default threshold comes with it.

    Safe from a callback or mid-script: the threshold is applied by :func:`apply_pending_threshold`
    before the slider is drawn (at once from a callback, on the next run otherwise)."""
    st.session_state[MODEL_KEY] = str(path)
    try:
        st.session_state[PENDING_THRESHOLD] = round_threshold(persistence.load_card(path).default_threshold)
    except persistence.ModelError:
        pass


def apply_pending_threshold() -> None:
    """Called by ``Home.py`` before the sidebar slider exists: hand it a threshold set elsewhere."""
    if PENDING_THRESHOLD in st.session_state:
        st.session_state[THRESHOLD_KEY] = st.session_state.pop(PENDING_THRESHOLD)


def model_sidebar() -> None:
    """The model-version picker (only when there is an adapted version to pick).

    Switching happens only when the user picks (``on_change``); the widget is re-synced
    to the version actually in use on every run, so a switch made elsewhere (Model
    versions page) shows here too, and a missing shipped model is never silently replaced.
    """
    found = versions.list_versions()
    if all(v.shipped for v in found):
        return
    paths = [str(v.path) for v in found]
    labels = {str(v.path): v.label for v in found}
    current = str(model_path())
    st.session_state[PICK_KEY] = current if current in paths else None
    st.sidebar.selectbox(
        "Model version",
        paths,
        key=PICK_KEY,
        format_func=labels.get,
        placeholder="Choose a model version",
        on_change=lambda: st.session_state.get(PICK_KEY) and use_model(Path(st.session_state[PICK_KEY])),
        help="The shipped model, or a version adapted to your laboratory (Model versions page). "
        "Every prediction records the version that made it.",
    )


def get_classifier():
    """The loaded :class:`Classifier`, or ``None`` after drawing a page-level message saying what to do."""
    path = model_path()
    try:
        card = persistence.load_card(path)
        return _load_classifier(str(path), card.model_sha256)
    except persistence.ModelError as exc:
        st.error(f"**The model could not be loaded.** {exc}", icon="🚫")
        return None


def get_card() -> persistence.ModelCard | None:
    try:
        return persistence.load_card(model_path())
    except persistence.ModelError:
        return None


@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> dict:
    return json.loads(Path(path).read_text())


def get_evaluation() -> dict | None:
    """The model's ``evaluation.json``, or ``None`` when it has not been written."""
    path = model_path() / persistence.EVALUATION_FILE
    if not path.is_file():
        return None
    try:
        return _read_json(str(path), path.stat().st_mtime)
    except ValueError:
        return None


def threshold() -> float:
    """The shared review threshold (set in the sidebar, or by the evaluation page)."""
    if THRESHOLD_KEY not in st.session_state:
        card = get_card()
        st.session_state[THRESHOLD_KEY] = round_threshold(card.default_threshold if card else 0.9)
    return round_threshold(st.session_state[THRESHOLD_KEY])


def set_threshold(value: float) -> None:
    """From a callback only (a widget's value cannot change after it is drawn)."""
    st.session_state[THRESHOLD_KEY] = round_threshold(value)


def threshold_sidebar() -> float:
    """Draw the one threshold control (called once, from ``Home.py``, so it shows on every page)."""
    apply_pending_threshold()
    threshold()
    st.sidebar.slider(
        "Review threshold (confidence)", 0.0, 1.0, key=THRESHOLD_KEY, step=0.005, format="%.3f",
        help="Predictions with a calibrated confidence below this are flagged for human review. Nothing is hidden.",
    )
    t = round_threshold(st.session_state[THRESHOLD_KEY])
    ev = get_evaluation()
    if ev:
        lines = []
        for s in ev.get("sets", {}).values():
            pts = [p for p in s.get("risk_coverage", []) if p["threshold"] <= t + 1e-9]
            if pts and pts[-1]["accuracy_accepted"] is not None:
                p = pts[-1]
                at = "" if abs(p["threshold"] - t) < 1e-9 else f" (read at {p['threshold']:.3f}, the nearest evaluated)"
                lines.append(
                    f"- {s['name']}: {p['accuracy_accepted']:.1%} accurate when accepted, {p['flagged_share']:.0%} "
                    f"flagged{at}"
                )
        if lines:
            st.sidebar.caption("At this threshold, on held-out test sets:\n" + "\n".join(lines))
    return t


def disclaimer() -> None:
    st.caption(f"⚠️ {DISCLAIMER}")


# ---------------------------------------------------------------------- review queue and Grad-CAM


@st.cache_resource(show_spinner=False)
def _review_store(path: str):
    return ReviewStore(path)


def review_store():
    """The review database (:func:`review.db_path`), or ``None`` after drawing what went wrong."""
    path = db_path()
    try:
        store = _review_store(str(path))
        if not store.path.is_file():  # deleted behind our back: create it again
            _review_store.clear()
            store = _review_store(str(path))
        return store
    except (ReviewDBError, OSError, sqlite3.Error) as exc:
        st.error(f"**The review database could not be opened.** {exc}", icon="🚫")
        return None


def queue_batch_for_review(store, clf, threshold: float) -> int:
    """Put this session's flagged predictions (at ``threshold``, or unfamiliar) into the review queue, each
    once per batch and session, named by their batch; the image bytes give the stored thumbnail. Returns how
    many were queued now. (What is *pending* is decided when the queue is read: flagged at the
    current threshold, or sent on purpose; see :meth:`review.store.Item.in_queue`. Unfamiliar cells are
    queued as sent, so they stay pending whatever the threshold until a person classifies them.)"""
    cache = st.session_state.get("hv_cache")
    batch = st.session_state.get("hv_batch")
    if cache is None or not batch:
        return 0
    done: set = st.session_state.setdefault("hv_queued", set())
    skip = {(sha, version) for sha, version, b in done if b == batch.id}
    todo = batching.for_review(batch.entries(), cache, clf.version, threshold, skip=skip)
    if not todo:
        return 0
    odd = [t for t in todo if t[0].unfamiliar]
    rest = [t for t in todo if not t[0].unfamiliar]
    n = review.queue_with_images(store, rest, clf.classes_, clf.version, threshold, batch=batch.id) if rest else 0
    if odd:
        n += review.queue_with_images(store, odd, clf.classes_, clf.version, threshold, batch=batch.id, sent=True)
    done.update((p.sha256, clf.version, batch.id) for p, _ in todo)
    return n


@st.cache_resource(show_spinner="Loading the Keras model for Grad-CAM…")
def _gradcam(path: str, sha: str, _clf):
    return for_classifier(_clf)


@st.cache_data(show_spinner="Computing the Grad-CAM heat map…", max_entries=128)
def _overlay(sha256: str, model_version: str, source: str, _clf, _rgb):
    explain = _gradcam(str(_clf.model_dir), _clf.card.model_sha256, _clf)
    hm = explain(_rgb)
    return overlay(hm.image, hm.heat), _clf.classes_[hm.class_index]


def gradcam_overlay(clf, sha256: str, source: str, rgb):
    """``(overlay RGB, explained class)`` for an image classified by ``clf``, cached by
    ``(sha256, model version, source)``; TensorFlow is imported only here, on first use."""
    return _overlay(sha256, clf.version, source, clf, rgb)

"""Dashboard glue shared by every page: the model loaded once, the one threshold, the disclaimer.

Streamlit-specific but logic-free: pages call these and draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from . import DISCLAIMER, persistence
from .config import model_dir

THRESHOLD_KEY = "threshold"
#: Widget values that must survive a switch to another page and back (Streamlit drops
#: the state of widgets a run did not draw, unless it is re-assigned on every run).
PERSISTENT_KEYS = ("hv_filter_classes", "hv_flagged_only", "hv_show_errors", "hv_conf_range", "hv_download_scope")


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
    from .inference import Classifier

    return Classifier.load(path)


def model_path() -> Path:
    return model_dir()


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
        st.session_state[THRESHOLD_KEY] = float(card.default_threshold) if card else 0.9
    return float(st.session_state[THRESHOLD_KEY])


def set_threshold(value: float) -> None:
    st.session_state[THRESHOLD_KEY] = float(min(max(value, 0.0), 1.0))


def threshold_sidebar() -> float:
    """Draw the one threshold control (called once, from ``Home.py``, so it shows on every page)."""
    threshold()
    st.sidebar.slider(
        "Review threshold (confidence)", 0.0, 1.0, key=THRESHOLD_KEY, step=0.005, format="%.3f",
        help="Predictions with a calibrated confidence below this are flagged for human review. Nothing is hidden.",
    )
    t = float(st.session_state[THRESHOLD_KEY])
    ev = get_evaluation()
    if ev:
        lines = []
        for s in ev.get("sets", {}).values():
            pts = [p for p in s.get("risk_coverage", []) if p["threshold"] <= t + 1e-9]
            if pts and pts[-1]["accuracy_accepted"] is not None:
                p = pts[-1]
                lines.append(f"- {s['name']}: {p['accuracy_accepted']:.1%} accurate when accepted, {p['flagged_share']:.0%} flagged")
        if lines:
            st.sidebar.caption("At this threshold, on held-out test sets:\n" + "\n".join(lines))
    return t


def disclaimer() -> None:
    st.caption(f"⚠️ {DISCLAIMER}")

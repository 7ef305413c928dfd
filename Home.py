"""HematoVision dashboard entry point: `streamlit run Home.py`.

Declares the pages and the sidebar threshold once, so both apply everywhere.
"""

import streamlit as st

from hematovision.app import state as app_state

st.set_page_config(page_title="HematoVision", page_icon="🩸", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Home", icon="🏠", default=True),
    st.Page("pages/classify.py", title="Classify", icon="🔬"),
    st.Page("pages/review.py", title="Review", icon="🧑‍🔬"),
    st.Page("pages/evaluation.py", title="Model evaluation", icon="📊"),
    st.Page("pages/models.py", title="Model versions", icon="🧬"),
]
nav = st.navigation(pages)
app_state.keep_widget_state()
app_state.model_sidebar()
app_state.threshold_sidebar()
st.sidebar.caption("Research and education use only, not diagnosis.")
nav.run()

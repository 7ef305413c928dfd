"""The dashboard's glue (Streamlit), below the pages in ``pages/``.

``state``: the model, the threshold and the review store shared by every page. ``batching``: a
session's uploads as one batch, classified once. ``eval_views``: the evaluation page's figures.
``results``: the Classify page's table and figures. ``fields``: its Whole fields mode (smear fields, every
white cell boxed). ``samples``: the sample images. ``display``: how
numbers, names, statuses and times are shown (one rounding of the threshold for screen, flags and CSV).
``adapting``: what the Adapt button runs. ``report_views``: the Download report (PDF) button and the cell
gallery on Classify and Review; ``gallery``: that gallery's tiles (free of Streamlit). ``devserver``: a dashboard
and a browser for tests and screenshots.

Only the module names are listed: importing ``hematovision.app.devserver`` does not import Streamlit.
"""

__all__ = [
    "adapting",
    "batching",
    "devserver",
    "display",
    "eval_views",
    "fields",
    "gallery",
    "report_views",
    "results",
    "samples",
    "state",
]

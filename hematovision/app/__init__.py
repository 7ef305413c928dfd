"""The dashboard's glue (Streamlit), below the pages in ``pages/``.

``state``: the model, the threshold and the review store shared by every page. ``batching``: a
session's uploads as one batch, classified once. ``eval_views``: the evaluation page's figures.
``samples``: the sample images. ``devserver``: a dashboard and a browser for tests and screenshots.
"""

__all__ = ["batching", "devserver", "eval_views", "samples", "state"]

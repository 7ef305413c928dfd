"""What a user takes away: the predictions table and its CSV (``tables``)."""

from .tables import columns, neutralise, predictions_frame, to_csv

__all__ = ["columns", "neutralise", "predictions_frame", "to_csv"]

"""The human review queue: flagged predictions and people's decisions, in SQLite (``store``); its decisions as
the differential report takes them (``reporting``)."""

from .reporting import report_reviews
from .store import UNUSABLE, Decision, Item, ReviewDBError, ReviewStore, db_path

__all__ = ["UNUSABLE", "Decision", "Item", "ReviewDBError", "ReviewStore", "db_path", "report_reviews"]

"""The human review queue: flagged predictions and people's decisions, in SQLite (``store``)."""

from .store import UNUSABLE, Decision, Item, ReviewDBError, ReviewStore, db_path

__all__ = ["UNUSABLE", "Decision", "Item", "ReviewDBError", "ReviewStore", "db_path"]

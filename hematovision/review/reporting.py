"""The review store's decisions as the differential report takes them (:class:`hematovision.reports.content.Reviews`).

The report sits in a layer below the review store, so it never reads the store itself: the CLI (and anything else
that makes a report from a database) reads it here and passes plain data in.
"""

from __future__ import annotations

from ..reports.content import Reviews
from .store import ReviewStore


def report_reviews(store: ReviewStore) -> Reviews:
    """The store's current decisions, the queued items' hashes by file name and model version (for results whose
    image is gone), and its thumbnails (read when a picture is needed)."""
    queued: dict[tuple[str, str], list[str]] = {}
    for it in store.items():
        queued.setdefault((it.file, it.model_version), []).append(it.sha256)
    return Reviews(
        decisions=store.current(),
        queued={k: tuple(v) for k, v in queued.items()},
        thumbnail=store.thumbnail,
    )

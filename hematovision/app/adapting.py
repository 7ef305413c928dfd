"""Adapting from the dashboard: a lab's labeled images (an uploaded zip, or the review queue's
decisions) into a new model version, as the Model versions page asks for it.

The page draws; this runs, with no Streamlit in it, so it is tested directly
(``tests/test_app_adapting.py``). The adaptation itself is :func:`~hematovision.training.adapt.adapt_labeled`;
the unfamiliar-cell check is then refitted for the new version (:func:`~hematovision.trust.refit_version`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.labeled import LabeledInputs, labeled_from_zip
from ..modeling import persistence
from ..training.adapt import AdaptConfig, AdaptOutcome, adapt_labeled, labeled_from_reviews
from ..trust import TrustRefit, refit_version, warm_refit_cache
from .display import threshold_text


@dataclass
class AdaptAttempt:
    """What one Adapt click gave: the new version, or a message for the user (never an exception)."""

    outcome: AdaptOutcome | None = None
    error: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of labeled files not used
    trust: TrustRefit | None = None  # the unfamiliar-cell refit that follows (None: not attempted)

    @property
    def ok(self) -> bool:
        return self.outcome is not None

    @property
    def summary(self) -> str:
        """One Markdown paragraph about the new version ("" when there is none). Saving a version does not
        switch to it: :meth:`message` says which is in use."""
        res = self.outcome
        if res is None:
            return ""
        counts = ", ".join(f"{c} {n}" for c, n in res.counts.items())
        return (
            f"**{res.version}** saved: adapted from `{res.parent}` on {sum(res.counts.values())} images "
            f"({counts}) in {res.seconds:.0f} s. Cross-fitted accuracy {res.crossfit_accuracy:.1%}; "
            f"temperature {res.temperature:.3f}; default threshold {threshold_text(res.threshold)}."
        )

    @property
    def trust_text(self) -> str:
        """The unfamiliar-cell refit's outcome in a sentence ("" when it was not attempted): shown apart, as a
        warning when the version is served without the check."""
        return "" if self.trust is None else _sentence(self.trust.message)

    def message(self, in_use: bool) -> str:
        """The summary and whether the new version is the one in use (it is only after an explicit choice)."""
        if self.outcome is None:
            return ""
        return self.summary + (
            " It is now in use." if in_use else " It is in the table above; the model in use has not changed."
        )


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def labeled_images(
    base_dir: Path,
    *,
    zip_upload: tuple[str, bytes] | None = None,
    store=None,
    batch: str | None = None,
    model_version: str | None = None,
) -> tuple[LabeledInputs, str]:
    """The labeled images and where they came from: ``zip_upload`` (name, bytes) of class folders, else the
    decisions in the review ``store`` (every one, or with ``batch``, only those on that batch's items of
    ``model_version``); labels are checked against the classes of the model in ``base_dir``."""
    classes = persistence.load_card(Path(base_dir)).classes
    if zip_upload is not None:
        name, data = zip_upload
        return labeled_from_zip(name, data, classes), name
    if store is None:
        raise ValueError("give a zip of class folders or a review store")
    if batch is not None:
        labeled = labeled_from_reviews(store, classes, batch=batch, model_version=model_version)
        return labeled, f"review decisions of batch {batch} ({store.path})"
    return labeled_from_reviews(store, classes), f"review decisions, all batches ({store.path})"


def adapt_version(
    base_dir: Path,
    name: str,
    *,
    zip_upload: tuple[str, bytes] | None = None,
    store=None,
    batch: str | None = None,
    model_version: str | None = None,
    cfg: AdaptConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    refit: bool = True,
    data: str | Path | None = None,
    refit_progress: Callable[[str, int, int], None] | None = None,
) -> AdaptAttempt:
    """Adapt the model in ``base_dir`` to the labeled images and save it as version ``name`` (in the per-user
    model folder); then (``refit``) refit the unfamiliar-cell check for it (:func:`~hematovision.trust.refit_version`,
    the training images under ``data``), a separate step whose time and outcome are reported apart. A problem the
    user can fix (too few images of a class, a name in use) comes back as ``error``, with the files that were
    skipped; a refit that cannot run (no training images here) as ``trust``'s message, the version kept."""
    labeled, origin = labeled_images(base_dir, zip_upload=zip_upload, store=store, batch=batch,
                                     model_version=model_version)
    try:
        res = adapt_labeled(base_dir, labeled, name.strip(), cfg=cfg or AdaptConfig(), source=origin, progress=progress)
    except (ValueError, FileExistsError) as exc:
        return AdaptAttempt(error=str(exc), skipped=list(labeled.skipped))
    trust = refit_version(res.path, data, progress=refit_progress, network=res.network) if refit else None
    res.network = None  # the session keeps the outcome, not the network
    return AdaptAttempt(res, skipped=list(res.skipped), trust=trust)


_WARMED: set[str] = set()
_WARM_LOCK = threading.Lock()


def warm_for_adaptation(model_dir: Path | None, data: str | Path | None = None, start=threading.Thread) -> bool:
    """Start computing the refit cache of the model in ``model_dir`` in a background thread, once per model folder
    and server process: called when a batch's sample goes to review, so the adaptation that may follow does not pay
    for it while the person reviews (``trust.warm_refit_cache``; it never raises). True when started."""
    if model_dir is None:
        return False
    key = str(Path(model_dir).resolve())
    with _WARM_LOCK:
        if key in _WARMED:
            return False
        _WARMED.add(key)
    start(target=warm_refit_cache, args=(model_dir, data), daemon=True, name="hematovision-warm-refit").start()
    return True

"""The classify page's logic, free of Streamlit so it can be unit-tested.

A dashboard reruns its script on every click. To keep that cheap and honest,
results are cached by ``(sha256 of the image bytes, model version)``: an image
already classified is never sent to the model again when the user moves the
threshold, changes a filter or comes back to the page. Only ``flagged`` depends
on the threshold, and it is recomputed from the cached confidence.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import pandas as pd

from ..imaging.sources import ImageInput, from_bytes, iter_uploads
from ..reports import tables as report
from ..review.store import UNUSABLE
from ..serving.classifier import Prediction
from .display import threshold_text

CacheKey = tuple[str, str]  # (sha256 of the bytes, model version)


@dataclass(frozen=True)
class Entry:
    """One row of the current batch: its display name and either a cache key or an error."""

    name: str
    sha256: str = ""
    error: str = ""
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class ResultCache:
    """Predictions (with thumbnails) by ``(sha256, model version)``; counts images sent to the model."""

    results: dict[CacheKey, Prediction] = field(default_factory=dict)
    thumbnails: dict[CacheKey, str] = field(default_factory=dict)
    inferred: int = 0  # images actually run through the model, ever, in this session
    max_entries: int = 20_000

    def __contains__(self, key: CacheKey) -> bool:
        return key in self.results

    def __len__(self) -> int:
        return len(self.results)

    def put(self, key: CacheKey, pred: Prediction) -> None:
        if len(self.results) >= self.max_entries:  # drop the oldest: dicts keep insertion order
            old = next(iter(self.results))
            self.results.pop(old, None)
            self.thumbnails.pop(old, None)
        self.results[key] = replace(pred, thumbnail=None)
        self.thumbnails[key] = thumbnail_uri(pred.thumbnail)


def thumbnail_uri(thumb: np.ndarray | None, quality: int = 85) -> str:
    """A small JPEG data URI for ``st.column_config.ImageColumn``; empty when there is no image.

    JPEG, not PNG: a 72-px cell is about 2 KB instead of 15 KB, and every rerun sends the whole
    column to the browser (2,000 PNG thumbnails were 29 MB a rerun)."""
    if thumb is None:
        return ""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(np.asarray(thumb, dtype=np.uint8)[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def plan(inputs: Iterable[ImageInput]) -> list[Entry]:
    """Read and hash every input once, in order; an input that cannot be read becomes an error entry."""
    out: list[Entry] = []
    for item in inputs:
        if item.error:
            out.append(Entry(item.name, error=item.error))
            continue
        try:
            data = item.read()
        except Exception as exc:  # a damaged zip member must not take the batch down
            out.append(Entry(item.name, error=f"cannot read ({type(exc).__name__}: {exc})"))
            continue
        if not data:
            out.append(Entry(item.name, error="empty file (0 bytes)"))
            continue
        out.append(Entry(item.name, hashlib.sha256(data).hexdigest(), data=data))
    return out


def plan_uploads(uploads: Iterable[tuple[str, bytes]]) -> list[Entry]:
    """Uploaded ``(name, bytes)`` pairs (zips expanded) as a batch plan."""
    return plan(iter_uploads(uploads))


def pending(entries: Sequence[Entry], cache: ResultCache, model_version: str) -> list[Entry]:
    """Entries whose bytes have no cached result for this model, each distinct image once."""
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.error or e.sha256 in seen or (e.sha256, model_version) in cache:
            continue
        seen.add(e.sha256)
        out.append(e)
    return out


def classify_pending(
    classifier,
    entries: Sequence[Entry],
    cache: ResultCache,
    threshold: float,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Run only the not-yet-cached images through ``classifier`` and cache them; returns how many ran."""
    version = classifier.version
    todo = pending(entries, cache, version)
    if not todo:
        return 0
    total = len(todo)
    inputs = [from_bytes(e.name, e.data) for e in todo]
    cb = (lambda n: progress(n, total)) if progress else None
    for e, pred in zip(todo, classifier.classify(inputs, threshold, thumbnails=True, progress=cb)):
        cache.put((e.sha256, version), replace(pred, sha256=pred.sha256 or e.sha256))
    cache.inferred += total
    return total


def assemble(entries: Sequence[Entry], cache: ResultCache, model_version: str) -> tuple[list[Prediction], list[str]]:
    """Predictions for the batch in input order (named as uploaded), and their thumbnail URIs."""
    preds, thumbs = [], []
    for e in entries:
        key = (e.sha256, model_version)
        if e.error or key not in cache:
            preds.append(Prediction(e.name, error=e.error or "not classified", sha256=e.sha256))
            thumbs.append("")
        else:
            preds.append(replace(cache.results[key], file=e.name))
            thumbs.append(cache.thumbnails.get(key, ""))
    return preds, thumbs


def results_frame(
    preds: Sequence[Prediction], thumbs: Sequence[str], classes: Sequence[str], threshold: float
) -> pd.DataFrame:
    """The results table at this threshold: the CLI columns plus ``thumbnail``, ``sha256``, ``note``."""
    frame = report.apply_threshold(report.predictions_frame(preds, classes), threshold)
    frame.insert(0, "thumbnail", list(thumbs))
    return frame


@dataclass(frozen=True)
class Filters:
    """What the user chose to see; ``None`` means no restriction."""

    classes: tuple[str, ...] | None = None
    flagged_only: bool = False
    confidence: tuple[float, float] = (0.0, 1.0)
    include_errors: bool = True
    unidentified_only: bool = False  # unfamiliar images only (reviewed or not)


def filter_frame(frame: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Rows that pass the filters. Error rows have no class or confidence: they follow ``include_errors``."""
    is_err = frame["error"].fillna("") != ""
    lo, hi = f.confidence
    ok = ~is_err & frame["confidence"].between(lo, hi)
    if f.classes is not None:
        ok &= frame["predicted_class"].isin(f.classes)
    if f.flagged_only:
        ok &= frame["flagged"].astype(bool)
    if f.unidentified_only:
        ok &= report.unfamiliar_of(frame)
    keep = ok | (is_err & f.include_errors & (not f.flagged_only) & (not f.unidentified_only))
    return frame[keep]


@dataclass(frozen=True)
class Summary:
    differential: pd.DataFrame  # class, count, percent (of classified images with a white-cell final class)
    n_images: int
    n_classified: int
    n_flagged: int
    n_errors: int
    n_reviewed: int = 0
    n_unusable: int = 0
    n_unidentified: int = 0  # unfamiliar and not yet reviewed: left out of the differential


def summarise(frame: pd.DataFrame, classes: Sequence[str]) -> Summary:
    """The white-cell differential (count and share per class) with flagged and error counts.

    Counts use ``final_class`` when the frame has review columns (a person's decision
    outranks the model's); images reviewed as unusable, and unfamiliar images nobody has
    reviewed yet (``n_unidentified``, an analyzer's "unidentified" cells), are left out of the differential.
    """
    is_err = frame["error"].fillna("") != ""
    good = frame[~is_err]
    final = good["final_class"] if "final_class" in good.columns else good["predicted_class"]
    odd = report.unfamiliar_of(good)
    if "reviewed_class" in good.columns:
        odd &= good["reviewed_class"].fillna("") == ""  # a person's class outranks "unidentified"
    final = final[~odd]
    counts = final.value_counts()
    n_cells = int(final.isin(list(classes)).sum())
    diff = pd.DataFrame({
        "class": list(classes),
        "count": [int(counts.get(c, 0)) for c in classes],
    })
    diff["percent"] = (100.0 * diff["count"] / n_cells) if n_cells else 0.0
    n_reviewed = int((good["reviewed_class"].fillna("") != "").sum()) if "reviewed_class" in good.columns else 0
    n_unusable = int((final == UNUSABLE).sum())
    return Summary(
        diff,
        len(frame),
        len(good),
        int(good["flagged"].astype(bool).sum()),
        int(is_err.sum()),
        n_reviewed,
        n_unusable,
        int(odd.sum()),
    )


def csv_report(frame: pd.DataFrame, classes: Sequence[str], threshold: float, model_version: str) -> str:
    """The CLI's CSV columns, the review columns, the trust columns (``unfamiliar``, ``flag_reason``,
    ``unfamiliarity``), then ``threshold`` and ``model_version``; formula cells neutralised."""
    frame = report.ensure_review_columns(frame)
    # The threshold as the screen shows it (display.threshold_text), and as the flags were computed.
    return report.to_csv(
        frame[report.columns(classes) + report.REVIEW_COLUMNS + [c for c in report.TRUST_COLUMNS if c in frame]],
        threshold=threshold_text(threshold),
        model_version=model_version,
    )


def for_review(entries: Sequence[Entry], cache: ResultCache, model_version: str, threshold: float,
               skip: Iterable[CacheKey] = ()) -> list[tuple[Prediction, bytes]]:
    """This batch's flagged predictions (below ``threshold``, or unfamiliar whatever their confidence) with their
    image bytes, each image once, leaving out keys in ``skip`` (already queued in this session): what to put in
    the review queue."""
    skip = set(skip)
    out, seen = [], set()
    for e in entries:
        key = (e.sha256, model_version)
        if e.error or key in skip or key in seen or key not in cache:
            continue
        p = cache.results[key]
        if p.ok and (p.confidence < threshold or p.unfamiliar):  # unfamiliar cells wait for a person's class too
            seen.add(key)
            out.append((replace(p, file=e.name, flagged=True), e.data or b""))
    return out


def image_of(entries: Sequence[Entry], sha256: str) -> bytes | None:
    """The original bytes of an image of this batch, by content hash (``None`` when not in the batch)."""
    return next((e.data for e in entries if e.sha256 == sha256 and e.data), None)


SAMPLES = "samples"
UPLOAD = "upload"


@dataclass
class Batch:
    """The one batch on the Classify page: the user's last upload, or the sample images, never both.

    A new upload replaces the samples and the previous upload (and loading the samples replaces an
    upload), so the table, the differential and the CSV only ever hold one batch. A file uploader
    forgets its files when the user leaves the page; keeping the bytes here lets the results come
    back without asking for the files again. The plan (read, hash) is memoised per change.
    """

    files: list[tuple[str, bytes]] = field(default_factory=list)
    kind: str = ""  # UPLOAD, SAMPLES, or "" when empty
    id: str = ""  # names the batch in the review queue, e.g. "upload 2026-11-29 20:01:33 UTC (12 files)"
    generation: int = 0
    _planned: tuple[int, list[Entry]] | None = field(default=None, repr=False)

    def _set(self, kind: str, pairs: Iterable[tuple[str, bytes]]) -> None:
        self.files = list(pairs)
        self.kind = kind if self.files else ""
        self.generation += 1
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        n = len(self.files)
        what = "sample images" if kind == SAMPLES else f"upload, {n} file{'s' if n != 1 else ''}"
        self.id = f"{what} ({stamp}, #{self.generation})" if self.files else ""

    def set_uploaded(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """A new upload: a new batch (the samples and any earlier upload leave the table)."""
        self._set(UPLOAD, pairs)

    def set_samples(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """The sample images: a new batch of their own (an upload leaves the table)."""
        self._set(SAMPLES, pairs)

    def clear(self) -> None:
        self._set("", [])

    @property
    def uploaded(self) -> list[tuple[str, bytes]]:
        return self.files if self.kind == UPLOAD else []

    @property
    def samples(self) -> list[tuple[str, bytes]]:
        return self.files if self.kind == SAMPLES else []

    def __bool__(self) -> bool:
        return bool(self.files)

    def entries(self) -> list[Entry]:
        if self._planned is None or self._planned[0] != self.generation:
            self._planned = (self.generation, plan_uploads(self.files))
        return self._planned[1]

    def describe(self) -> str:
        """What the table holds, in words (the page's summary line)."""
        if not self.files:
            return "The table is empty."
        n = len(self.entries())
        if self.kind == SAMPLES:
            return (f"The table holds the {n} sample images (held-out test images from public datasets, not yours). "
                    "Uploading files replaces them.")
        files = len(self.files)
        extra = f", {n} images once zips are opened" if n != files else ""
        return (f"The table holds your upload: {files} file{'s' if files != 1 else ''}{extra}. "
                "A new upload, or the sample images, replaces it.")


#: Cells per predicted class in the review sample the domain-shift banner offers (issue 19's guided path).
SAMPLE_PER_CLASS = 20


def review_sample(
    entries: Sequence[Entry], cache: ResultCache, model_version: str, classes: Sequence[str],
    per_class: int = SAMPLE_PER_CLASS,
) -> list[tuple[Prediction, bytes]]:
    """A balanced sample of this batch for review: up to ``per_class`` images of each predicted class, spread
    over the class's confidence range (sorted by confidence, evenly spaced picks: its most uncertain image
    and its surest, and the ones between), so that the reviewed labels show both where the model hesitates and
    what it calls typical -- what adapting from these reviews needs. Unfamiliar images are sampled with their
    predicted class. Each image once (by content hash), in batch order within a class."""
    by_class: dict[str, list[tuple[Prediction, bytes]]] = {c: [] for c in classes}
    seen = set()
    for e in entries:
        key = (e.sha256, model_version)
        if e.error or key in seen or key not in cache:
            continue
        p = cache.results[key]
        if p.ok and p.predicted_class in by_class:
            seen.add(key)
            by_class[p.predicted_class].append((replace(p, file=e.name), e.data or b""))
    out = []
    for c in classes:
        items = sorted(by_class[c], key=lambda t: t[0].confidence)
        if len(items) > per_class:
            picks = np.unique(np.round(np.linspace(0, len(items) - 1, per_class)).astype(int))
            items = [items[i] for i in picks]
        out += items
    return out


def differential_by_version(
    entries: Sequence[Entry], cache: ResultCache, classes: Sequence[str], threshold: float
) -> pd.DataFrame:
    """The machine differential of this batch under every model version that has classified all of it in this
    session (the cache keeps each version's results): columns ``version, class, count, percent``, plus
    ``unidentified`` (unfamiliar images, left out of the count) per version. What the guided path shows after
    a batch is classified again with an adapted version: the differential before and after. Reviews are left
    out (a person's decisions belong to one version)."""
    shas = [e.sha256 for e in entries if not e.error and e.sha256]
    versions = list(dict.fromkeys(v for _, v in cache.results))
    rows = []
    for v in versions:
        if not shas or any((s, v) not in cache for s in shas):
            continue
        preds, thumbs = assemble(entries, cache, v)
        s = summarise(results_frame(preds, thumbs, classes, threshold), classes)
        for _, r in s.differential.iterrows():
            rows.append({"version": v, "class": r["class"], "count": int(r["count"]), "percent": float(r["percent"]),
                         "unidentified": s.n_unidentified})
    return pd.DataFrame(rows, columns=["version", "class", "count", "percent", "unidentified"])

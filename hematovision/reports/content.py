"""What a differential report says: built by one function, :func:`build_report`, for the CLI and the dashboard.

Input: the results of ``classify`` (the CLI's CSV, the Classify page's CSV or its table), and
optionally review decisions (:class:`Reviews`, read from the review database by the caller:
:func:`hematovision.review.reporting.report_reviews`), which apply exactly as on the Classify page: the
current decision of each image under the row's model version, through
:func:`hematovision.reports.tables.with_reviews` (``final_class`` = the reviewed class where there is one).
Output: :class:`ReportContent`, plain data and no layout; :mod:`.pdf` lays it out.

Images are looked up, never required: the file named in the results if it still exists
(a zip member too), else the review store's thumbnail, else the cell is marked
"image not available". A gallery thumbnail is what the network saw: the framed cell
(:func:`hematovision.imaging.framing.model_input`, with the model card's framing).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import zipfile
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import DISCLAIMER, __version__
from ..imaging.decode import decode_image, thumbnail
from ..imaging.framing import FRAMINGS, model_input
from ..imaging.limits import DEFAULT_LIMITS
from ..modeling import persistence, versions
from ..serving.classifier import BATCH_SHIFT
from . import tables as report
from .tables import UNUSABLE

#: The columns every ``classify`` output has (plus at least one ``p_<class>``).
REQUIRED_COLUMNS = ("file", "predicted_class", "confidence", "flagged", "error")
#: Field mode (``classify --fields``): the cell's number within its field and its box in the field's pixels.
FIELD_COLUMNS = ("cell", "x0", "y0", "x1", "y1")
#: The gallery group of cells the model called unfamiliar (``unfamiliar`` column) and no person has classified.
UNIDENTIFIED = "unidentified"
REFERENCE_LABEL = "Adult reference intervals, for orientation only, not diagnostic"
#: Relative counts (% of white cells) commonly quoted for healthy adults. They vary between
#: laboratories, methods and populations: shown beside the differential for orientation only.
ADULT_REFERENCE_PERCENT: dict[str, tuple[float, float]] = {
    "neutrophil": (40.0, 75.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (1.0, 6.0),
    "basophil": (0.0, 2.0),
}
THUMB_PX = 128  # gallery thumbnail side (px): the framed cell as the network saw it, smaller
FIELD_PX = 900  # a field image's longer side in the report (px)
MAX_GALLERY = 2000  # cells shown in the gallery at most; the rest are counted as left out
MAX_FIELDS = 100  # field pictures in a report at most; the rest are counted as left out
MAX_TEXT = 200  # characters of a sample ID or operator name
IMAGE_NOT_AVAILABLE = "image not available"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}

#: ``(file as written in the results, sha256 or "") -> the image's bytes``, or ``None`` when it is gone.
ImageLookup = Callable[[str, str], "bytes | None"]


def _no_thumbnail(sha256: str, model_version: str) -> bytes | None:
    return None


@dataclass(frozen=True)
class Reviews:
    """Review decisions to apply, as plain data. The review store sits in a layer above this one, so
    its caller reads it (:func:`hematovision.review.reporting.report_reviews`) and passes this in."""

    #: ``(sha256, model version) -> the current decision`` (an object with ``reviewed_class``, ``reviewer``,
    #: ``reviewed_at``; :class:`hematovision.review.Decision`).
    decisions: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    #: ``(file name, model version) -> sha256 of every queued item of that name``: keys a row whose file is gone.
    queued: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    #: ``(sha256, model version) -> the stored thumbnail``, or ``None``.
    thumbnail: Callable[[str, str], bytes | None] = _no_thumbnail


class ReportInputError(ValueError):
    """Results that cannot make a report (not a ``classify`` output, columns missing, empty): one line."""


@dataclass(frozen=True)
class ModelInfo:
    """The model that made the predictions, as far as this machine knows it."""

    version: str
    figures: tuple[str, ...] = ()  # headline test figures, one line per test set
    framing: str = "cell"
    found: bool = False  # whether its card was found here (else framing is a guess and figures are absent)


@dataclass(frozen=True)
class DifferentialRow:
    cell_class: str
    count: int
    percent: float
    reference: tuple[float, float] | None  # adult interval in %, or None when there is none for the class


@dataclass(frozen=True)
class ReviewStatus:
    """Where the review stands: the report is preliminary while any flagged cell lacks a decision."""

    n_flagged: int
    n_flagged_unreviewed: int
    n_reviewed: int  # every cell with a decision, flagged or not
    n_confirmed: int
    n_reclassified: int
    n_unusable: int
    reviewers: tuple[str, ...]
    last_reviewed_at: str

    @property
    def preliminary(self) -> bool:
        return self.n_flagged_unreviewed > 0

    @property
    def headline(self) -> str:
        if self.preliminary:
            n = self.n_flagged_unreviewed
            return f"PRELIMINARY \u2014 {n} flagged cell{'s' if n != 1 else ''} not yet reviewed"
        if self.n_flagged:
            return f"REVIEWED \u2014 all {self.n_flagged} flagged cell{'s' if self.n_flagged != 1 else ''} reviewed"
        return "REVIEWED \u2014 no cell was flagged for review"


@dataclass(frozen=True)
class GalleryCell:
    number: int  # 1-based row of the results, so the report points back into the CSV
    file: str
    label: str  # the file's name, or "field k · cell c"
    predicted_class: str
    final_class: str
    confidence: float
    flagged: bool
    action: str  # "", "confirmed", "reclassified" or "unusable"
    reviewer: str
    image: np.ndarray | None  # RGB uint8, THUMB_PX square: what the network saw; None when not available
    image_source: str  # "image file", "review store" or "" (no image)
    sha256: str = ""
    model_version: str = ""

    @property
    def reviewed(self) -> bool:
        return bool(self.action)

    @property
    def reclassified(self) -> bool:
        return self.action == "reclassified"


@dataclass(frozen=True)
class GalleryGroup:
    name: str  # a class, UNIDENTIFIED or UNUSABLE
    cells: tuple[GalleryCell, ...]


@dataclass(frozen=True)
class FieldBox:
    cell: int
    box: tuple[float, float, float, float]  # in the shown image's pixels
    final_class: str
    flagged: bool


@dataclass(frozen=True)
class FieldView:
    number: int
    file: str
    image: np.ndarray | None  # the field, longer side at most FIELD_PX; None when not available
    boxes: tuple[FieldBox, ...]


@dataclass(frozen=True)
class ReportContent:
    sample_id: str
    operator: str
    created_at: str  # UTC
    hematovision_version: str
    model: ModelInfo
    source: str  # where the results came from (a CSV's name, or "dashboard batch")
    threshold: float | None
    classes: tuple[str, ...]
    differential: tuple[DifferentialRow, ...]
    total_cells: int  # white cells in the differential
    n_rows: int  # rows of the results (images, or cells in field mode)
    n_unidentified: int | None  # None: the results do not say (no ``unfamiliar`` column)
    n_unusable: int
    n_errors: int
    n_no_cell: int  # fields in which no white cell was found
    errors: tuple[tuple[str, str], ...]  # (file, reason)
    status: ReviewStatus
    gallery: tuple[GalleryGroup, ...]
    gallery_left_out: int
    fields: tuple[FieldView, ...]
    fields_left_out: int
    n_images_missing: int  # gallery cells without an image
    field_mode: bool
    n_held: int = 0  # flagged only because the whole batch looked unlike the training images (flag_reason batch_shift)
    reference_label: str = REFERENCE_LABEL
    disclaimer: str = DISCLAIMER


# ---------------------------------------------------------------------- reading and checking results


def _unneutralise(value: str) -> str:
    """Undo :func:`report.neutralise` (a quote before a formula character) for file names."""
    if value.startswith("'") and value[1:2] and value[1] in "=+-@\t\r":
        return value[1:]
    return value


def _as_bool(value, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE or text == "nan":
        return False
    raise ReportInputError(f"{where}: {value!r} is not true or false")


def read_results(path: str | Path) -> pd.DataFrame:
    """A ``classify`` CSV, checked (:func:`check_results`); :class:`ReportInputError` says why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ReportInputError(f"{path.name} is empty: expected the CSV written by 'classify'") from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportInputError(f"{path.name} is not a readable CSV ({reason[:120]})") from None
    return check_results(frame, path.name)


def check_results(frame: pd.DataFrame, name: str = "results") -> pd.DataFrame:
    """The results with typed columns (``confidence`` float, ``flagged`` bool, text elsewhere), or
    :class:`ReportInputError` naming the first problem: missing columns, no rows, an unknown class."""
    cols = [str(c) for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    p_cols = [c for c in cols if c.startswith("p_") and len(c) > 2]
    if missing or not p_cols:
        missing += [] if p_cols else ["p_<class>"]
        raise ReportInputError(f"{name} is not a HematoVision 'classify' CSV: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise ReportInputError(f"{name} has no rows: nothing to report")
    classes = [c[2:] for c in p_cols]
    out = frame.copy()
    out.columns = cols
    for c in ("file", "predicted_class", "error", "note", "sha256", "model_version", *report.REVIEW_COLUMNS):
        if c in out.columns:
            out[c] = out[c].fillna("").astype(str).map(_unneutralise)
    out["predicted_class"] = out["predicted_class"].str.strip()
    out["flagged"] = [_as_bool(v, f"{name} row {k + 1}, flagged") for k, v in enumerate(out["flagged"])]
    if "unfamiliar" in out.columns:
        out["unfamiliar"] = [_as_bool(v, f"{name} row {k + 1}, unfamiliar") for k, v in enumerate(out["unfamiliar"])]
    out["confidence"] = pd.to_numeric(out["confidence"], errors="coerce")
    for k, (err, cls, conf) in enumerate(zip(out["error"], out["predicted_class"], out["confidence"])):
        if err or not cls:
            continue  # an error row, or a field with no white cell found
        if cls not in classes:
            raise ReportInputError(
                f"{name} row {k + 1}: predicted class {cls!r} is not one of its classes ({', '.join(classes)})"
            )
        if not math.isfinite(conf):
            raise ReportInputError(f"{name} row {k + 1}: confidence is not a number")
    if "sha256" not in out.columns:
        out["sha256"] = ""
    if all(c in out.columns for c in report.REVIEW_COLUMNS):
        ok = (out["error"] == "") & (out["predicted_class"] != "")
        out["final_class"] = [(f or p) if o else "" for o, f, p in zip(ok, out["final_class"], out["predicted_class"])]
    return out.reset_index(drop=True)


def classes_of(frame: pd.DataFrame) -> list[str]:
    """The model's classes, in output order, from the ``p_<class>`` columns."""
    return [str(c)[2:] for c in frame.columns if str(c).startswith("p_") and len(str(c)) > 2]


def is_field_mode(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in FIELD_COLUMNS)


# ---------------------------------------------------------------------- where images and the model come from


def files_on_disk(base: str | Path | None = None, max_bytes: int = DEFAULT_LIMITS.max_bytes) -> ImageLookup:
    """Look images up by the file names ``classify`` wrote: as given, else relative to ``base`` (the CSV's
    folder); ``archive.zip/member`` is read from the archive. Missing or unreadable: ``None``."""
    roots = [Path.cwd()] + ([Path(base)] if base is not None else [])

    def read_file(p: Path) -> bytes | None:
        try:
            if p.is_file() and p.stat().st_size <= max_bytes:
                return p.read_bytes()
        except OSError:
            pass
        return None

    def read_member(name: str) -> bytes | None:
        parts = name.split("/")
        for k in range(len(parts) - 1, 0, -1):
            head = "/".join(parts[:k])
            if not head.lower().endswith(".zip"):
                continue
            for root in roots:
                archive = Path(head) if Path(head).is_absolute() else root / head
                if archive.is_file():
                    try:
                        with zipfile.ZipFile(archive) as zf:
                            info = zf.getinfo("/".join(parts[k:]))
                            return zf.read(info) if info.file_size <= max_bytes else None
                    except (OSError, KeyError, zipfile.BadZipFile, RuntimeError, ValueError):
                        return None
        return None

    def lookup(file: str, sha256: str = "") -> bytes | None:
        if not file:
            return None
        p = Path(file)
        for candidate in [p] if p.is_absolute() else [root / p for root in roots]:
            data = read_file(candidate)
            if data is not None:
                return data
        return read_member(file)

    return lookup


def model_info(version: str, model_dir: str | Path | None = None) -> ModelInfo:
    """The card and headline test figures of the model ``version``: from ``model_dir`` when given, else the
    shipped model or an adapted version with that version string. Not found: a bare :class:`ModelInfo`."""
    path = Path(model_dir) if model_dir is not None else None
    if path is None:
        try:
            path = next((v.path for v in versions.list_versions() if v.version == version), None)
        except OSError:
            path = None
    if path is None:
        return ModelInfo(version)
    try:
        card = persistence.load_card(path)
    except persistence.ModelError:
        return ModelInfo(version)
    if version and card.version != version:
        return ModelInfo(version)
    figures: list[str] = []
    try:
        ev = json.loads((path / persistence.EVALUATION_FILE).read_text())
    except (OSError, ValueError):
        ev = {}
    if ev.get("model_version") in (None, card.version):
        for s in ev.get("sets", {}).values():
            try:
                figures.append(
                    f"{s['name']}: accuracy {float(s['accuracy']):.1%} on {int(s['n_images'])} images, "
                    f"macro-F1 {float(s['macro_f1']):.3f}"
                )
            except (KeyError, TypeError, ValueError):
                continue
    framing = card.framing if card.framing in FRAMINGS else "cell"
    return ModelInfo(card.version, tuple(figures), framing, True)


# ---------------------------------------------------------------------- building the content


def _decision_keys(frame: pd.DataFrame, reviews: Reviews | None) -> pd.DataFrame:
    """Rows without a content hash get one from the review store when exactly one queued item has
    their file name and model version (the file itself is gone)."""
    if reviews is None or not (frame["sha256"] == "").any():
        return frame
    out = frame.copy()
    for i in out.index[out["sha256"] == ""]:
        found = reviews.queued.get((out.at[i, "file"], out.at[i, "model_version"]), [])
        if len(found) == 1:
            out.at[i, "sha256"] = found[0]
    return out


def _apply_reviews(frame: pd.DataFrame, reviews: Reviews | None) -> pd.DataFrame:
    """Review columns as the Classify page makes them: the store's current decisions of each row's model
    version (:func:`report.with_reviews`). Without a store, the results' own review columns (if any) stand."""
    if reviews is None:
        return report.ensure_review_columns(frame)
    current = reviews.decisions
    had = frame if all(c in frame.columns for c in report.REVIEW_COLUMNS) else None
    parts = []
    for version, sub in frame.groupby("model_version", sort=False):
        decisions = {sha: d for (sha, v), d in current.items() if v == version}
        parts.append(report.with_reviews(sub, decisions))
    out = pd.concat(parts).loc[frame.index]
    if had is not None:  # a row the store knows nothing about keeps the review its CSV recorded
        keep = out["reviewed_class"] == ""
        for c in report.REVIEW_COLUMNS:
            out.loc[keep, c] = had.loc[keep, c]
    return out


def _frame_cell(rgb: np.ndarray, framing: str) -> np.ndarray:
    return model_input(rgb, THUMB_PX, framing)


def _crop(rgb: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return rgb[y0:y1, x0:x1]


def _box(row) -> tuple[float, float, float, float] | None:
    try:
        box = tuple(float(row[c]) for c in ("x0", "y0", "x1", "y1"))
    except (TypeError, ValueError):
        return None
    return box if all(math.isfinite(v) for v in box) else None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def build_report(
    results: pd.DataFrame,
    *,
    sample_id: str = "",
    operator: str = "",
    reviews: Reviews | None = None,
    images: ImageLookup | None = None,
    model: ModelInfo | None = None,
    created_at: str | None = None,
    source: str = "",
    threshold: float | None = None,
    max_gallery: int = MAX_GALLERY,
    framed: MutableMapping | None = None,
) -> ReportContent:
    """Everything a differential report says, from ``classify`` results (see the module's docstring).

    ``results``: a CSV read by :func:`read_results`, or the Classify page's table (checked again here).
    ``reviews``: review decisions to apply (:class:`Reviews`).
    ``images``: where images are looked up (:func:`files_on_disk`).
    ``model``: the model's card facts (default: :func:`model_info` of the results' model version).
    ``framed``: a cache of gallery pictures kept between calls (the dashboard's session), so each cell is framed once.
    Raises :class:`ReportInputError` for results that are not a ``classify`` output.
    """
    for what, text in (("sample ID", sample_id), ("operator", operator)):
        if len(str(text or "").strip()) > MAX_TEXT:
            raise ReportInputError(f"the {what} is longer than {MAX_TEXT} characters")
    frame = check_results(results, source or "results")
    classes = classes_of(frame)
    if "model_version" not in frame.columns or not (frame["model_version"] != "").any():
        frame["model_version"] = model.version if model is not None else ""
    versions_seen = [v for v in dict.fromkeys(frame["model_version"]) if v]
    if model is None:
        model = model_info(versions_seen[0]) if versions_seen else ModelInfo("unknown")
    if threshold is None and "threshold" in frame.columns:
        t = pd.to_numeric(frame["threshold"], errors="coerce").dropna()
        threshold = float(t.iloc[0]) if len(t) else None
    field_mode = is_field_mode(frame)
    lookup = images or (lambda file, sha: None)
    is_err = frame["error"] != ""
    has_cell = ~is_err & (frame["predicted_class"] != "")

    # Content hashes key the review decisions. In field mode one file holds many cells, so its hash
    # cannot name a cell: only a hash the results carry is used there.
    fetched: dict[tuple[str, str], bytes | None] = {}  # by (file, sha256 as given): two uploads may share a name
    data_of: dict[int, bytes | None] = {}
    for i in frame.index[has_cell]:
        key = (frame.at[i, "file"], "" if field_mode else frame.at[i, "sha256"])
        if key not in fetched:
            fetched[key] = lookup(*key)
        data_of[i] = fetched[key]
        if not field_mode and not frame.at[i, "sha256"] and data_of[i]:
            frame.at[i, "sha256"] = hashlib.sha256(data_of[i]).hexdigest()
    frame = _apply_reviews(_decision_keys(frame, reviews), reviews)

    unfamiliar = frame["unfamiliar"] if "unfamiliar" in frame.columns else pd.Series(False, index=frame.index)
    reviewed = frame["reviewed_class"] != ""
    group = pd.Series("", index=frame.index, dtype=object)
    group[has_cell] = frame.loc[has_cell, "final_class"]
    group[has_cell & unfamiliar.astype(bool) & ~reviewed] = UNIDENTIFIED

    counts = group[has_cell].value_counts()
    total = int(sum(int(counts.get(c, 0)) for c in classes))
    differential = tuple(
        DifferentialRow(
            c,
            int(counts.get(c, 0)),
            100.0 * int(counts.get(c, 0)) / total if total else 0.0,
            ADULT_REFERENCE_PERCENT.get(c),
        )
        for c in classes
    )

    flagged = has_cell & frame["flagged"].astype(bool)
    pred, rev = frame["predicted_class"], frame["reviewed_class"]
    done = has_cell & reviewed
    names = sorted({(r or "anonymous") for r in frame.loc[done, "reviewer"]})
    status = ReviewStatus(
        n_flagged=int(flagged.sum()),
        n_flagged_unreviewed=int((flagged & ~reviewed).sum()),
        n_reviewed=int(done.sum()),
        n_confirmed=int((done & (rev == pred)).sum()),
        n_reclassified=int((done & (rev != pred) & (rev != UNUSABLE)).sum()),
        n_unusable=int((done & (rev == UNUSABLE)).sum()),
        reviewers=tuple(names),
        last_reviewed_at=max(frame.loc[done, "reviewed_at"], default=""),
    )

    # The gallery: every cell, grouped by final class, what the network saw.
    order = classes + [UNIDENTIFIED, UNUSABLE]
    grouped: dict[str, list[GalleryCell]] = {g: [] for g in order}
    field_no = {f: k + 1 for k, f in enumerate(dict.fromkeys(frame.loc[~is_err, "file"]))} if field_mode else {}
    decoded: tuple[str, np.ndarray | None] = ("", None)
    shown = left_out = missing = 0
    for i in frame.index[has_cell]:
        if shown >= max_gallery:
            left_out += 1
            continue
        row = frame.loc[i]
        f, sha, version = row["file"], row["sha256"], row["model_version"]
        key = (f, sha, version, _box(row) if field_mode else None, model.framing)
        if framed is not None and key in framed:
            image, where = framed[key]
            data = None
        else:
            image, data, where = None, data_of.get(i), "image file"
            if data is None and reviews is not None and sha:
                data, where = reviews.thumbnail(sha, version), "review store"
        if data is not None:
            try:
                if decoded[0] != f"{where}:{f}:{sha}":
                    decoded = (f"{where}:{f}:{sha}", decode_image(data).rgb)
                rgb = decoded[1]
                if field_mode and where == "image file":
                    box = _box(row)
                    rgb = _crop(rgb, box) if box is not None else None
                image = _frame_cell(rgb, model.framing) if rgb is not None else None
            except Exception:  # an unreadable image is a missing picture, never a failed report
                image = None
            if framed is not None and image is not None:
                framed[key] = (image, where)
        missing += image is None
        label = f"field {field_no.get(f, 0)} \u00b7 cell {row['cell']}" if field_mode else Path(f).name or f
        action = (
            ""
            if not row["reviewed_class"]
            else (
                UNUSABLE
                if row["reviewed_class"] == UNUSABLE
                else "confirmed"
                if row["reviewed_class"] == row["predicted_class"]
                else "reclassified"
            )
        )
        grouped[group[i]].append(
            GalleryCell(
                number=int(i) + 1,
                file=f,
                label=label,
                predicted_class=row["predicted_class"],
                final_class=row["final_class"],
                confidence=float(row["confidence"]),
                flagged=bool(row["flagged"]),
                action=action,
                reviewer=row["reviewer"],
                image=image,
                image_source=where if image is not None else "",
                sha256=sha,
                model_version=version,
            )
        )
        shown += 1
    gallery = tuple(GalleryGroup(g, tuple(grouped[g])) for g in order if grouped[g])

    fields: list[FieldView] = []
    if field_mode:
        for f, k in list(field_no.items())[:MAX_FIELDS]:
            rows = frame[(frame["file"] == f) & has_cell]
            image, scale = None, 1.0
            data = fetched[(f, "")] if (f, "") in fetched else lookup(f, "")
            if data is not None:
                try:
                    rgb = decode_image(data).rgb
                    scale = min(1.0, FIELD_PX / max(rgb.shape[:2]))
                    image = thumbnail(rgb, round(max(rgb.shape[:2]) * scale)) if scale < 1 else rgb
                except Exception:
                    image = None
            boxes = []
            for _, r in rows.iterrows():
                b = _box(r)
                if b is not None:
                    boxes.append(
                        FieldBox(
                            int(float(r["cell"])) if str(r["cell"]).strip() else 0,
                            tuple(v * scale for v in b),
                            r["final_class"],
                            bool(r["flagged"]),
                        )
                    )
            fields.append(FieldView(k, f, image, tuple(boxes)))

    return ReportContent(
        sample_id=str(sample_id or "").strip(),
        operator=str(operator or "").strip(),
        created_at=created_at or _now(),
        hematovision_version=__version__,
        model=model,
        source=source,
        threshold=threshold,
        classes=tuple(classes),
        differential=differential,
        total_cells=total,
        n_rows=len(frame),
        n_unidentified=int((group == UNIDENTIFIED).sum()) if "unfamiliar" in frame.columns else None,
        n_unusable=int((group == UNUSABLE).sum()),
        n_errors=int(is_err.sum()),
        n_no_cell=int((~is_err & (frame["predicted_class"] == "")).sum()),
        errors=tuple(zip(frame.loc[is_err, "file"], frame.loc[is_err, "error"])),
        status=status,
        gallery=gallery,
        gallery_left_out=left_out,
        fields_left_out=max(0, len(field_no) - MAX_FIELDS),
        fields=tuple(fields),
        n_images_missing=missing,
        field_mode=field_mode,
        n_held=int((has_cell & (frame["flag_reason"].fillna("").astype(str) == BATCH_SHIFT)).sum())
        if "flag_reason" in frame.columns
        else 0,
    )


def report_from_csv(
    path: str | Path,
    *,
    sample_id: str = "",
    operator: str = "",
    reviews: Reviews | None = None,
    created_at: str | None = None,
) -> ReportContent:
    """:func:`build_report` for a CSV on disk: images looked up beside it (the CLI's ``report``)."""
    path = Path(path)
    return build_report(
        read_results(path),
        sample_id=sample_id,
        operator=operator,
        reviews=reviews,
        images=files_on_disk(path.resolve().parent),
        created_at=created_at,
        source=path.name,
    )

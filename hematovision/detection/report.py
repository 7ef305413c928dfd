"""Per-cell tables, CSV rows and run summaries for whole fields (and the summary for single images).

A field's row set: one row per white cell found, with the single-image CSV's columns plus ``cell``
(1-based within the field), the box ``x0, y0, x1, y1`` in the original image's pixels, ``partial``
and ``note``, then the trust columns (``unfamiliar``, ``flag_reason``, ``unfamiliarity``). A field with no
white cell is one row with an empty class and the note :data:`~.cells.NO_CELL_NOTE`; an unreadable file is
one error row, as in single-image mode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import pandas as pd

from ..reports.tables import NEAR_SOURCE, TRUST_COLUMNS, columns, trust_cells, trust_values
from ..serving.classifier import Prediction
from ..stats.domain_shift import domain_shift_counts
from .cells import FieldResult

CELL_COLUMNS = ["cell", "x0", "y0", "x1", "y1", "partial", "note"]


def field_columns(classes: Sequence[str]) -> list[str]:
    """The ``classify --fields`` CSV header."""
    return columns(classes) + ["threshold", "model_version"] + CELL_COLUMNS + TRUST_COLUMNS


def fields_frame(results: Iterable[FieldResult], classes: Sequence[str]) -> pd.DataFrame:
    """One row per cell (or per empty or unreadable field), in order.

    Columns: :func:`field_columns` without threshold and model version, plus ``sha256`` (the cell's
    review key, see :func:`~.cells.cell_key`), ``field_sha256`` and ``field_index`` (0-based position
    of the field in the run), and ``near_source`` (each cell's nearest training source, for the batch verdict).
    """
    rows = []
    for fi, r in enumerate(results):
        base = {"file": r.file, "field_sha256": r.sha256, "field_index": fi}
        if not r.ok or not r.cells:
            rows.append(
                {
                    **base,
                    "predicted_class": "",
                    "confidence": float("nan"),
                    **{f"p_{c}": float("nan") for c in classes},
                    "flagged": False,
                    "error": r.error,
                    "cell": None,
                    "x0": None,
                    "y0": None,
                    "x1": None,
                    "y1": None,
                    "partial": None,
                    "note": r.note,
                    "sha256": "",
                    "unfamiliar": False,
                    "flag_reason": "",
                    "unfamiliarity": float("nan"),
                    NEAR_SOURCE: "",
                }
            )
            continue
        for c in r.cells:
            p = c.prediction
            note = "; ".join(x for x in (r.note, p.note) if x)
            rows.append(
                {
                    **base,
                    "predicted_class": p.predicted_class,
                    "confidence": p.confidence,
                    **{f"p_{k}": v for k, v in zip(classes, p.probabilities)},
                    "flagged": p.flagged,
                    "error": "",
                    "cell": c.index,
                    "x0": c.box.x0,
                    "y0": c.box.y0,
                    "x1": c.box.x1,
                    "y1": c.box.y1,
                    "partial": c.box.partial,
                    "note": note,
                    "sha256": p.sha256,
                    **trust_values(p),
                    NEAR_SOURCE: p.near_source,
                }
            )
    cols = columns(classes) + CELL_COLUMNS + ["sha256", "field_sha256", "field_index"] + TRUST_COLUMNS + [NEAR_SOURCE]
    frame = pd.DataFrame(rows, columns=cols)
    for k in ("cell", "x0", "y0", "x1", "y1"):
        frame[k] = frame[k].astype("Int64")
    frame["partial"] = frame["partial"].astype("boolean")
    return frame


def csv_row(r: FieldResult, cell_index: int | None, classes: Sequence[str], threshold: float, version: str) -> list:
    """One CSV row (values as text) for a cell of ``r`` (``cell_index`` 0-based), or for an empty/error field."""
    if cell_index is None:
        return (
            [r.file, "", ""]
            + [""] * len(classes)
            + [False, r.error, threshold, version, "", "", "", "", "", "", r.note, False, "", ""]
        )
    c = r.cells[cell_index]
    p = c.prediction
    note = "; ".join(x for x in (r.note, p.note) if x)
    return (
        [r.file, p.predicted_class, f"{p.confidence:.6f}"]
        + [f"{v:.6f}" for v in p.probabilities]
        + [p.flagged, "", threshold, version, c.index, c.box.x0, c.box.y0, c.box.x1, c.box.y1, c.box.partial, note]
        + trust_cells(p)
    )


@dataclass
class RunSummary:
    """What a ``classify`` run found: counts per class (the differential), flagged, unfamiliar, errors, per
    field, and whether the batch looks unlike the training data.

    ``unit`` is ``cells`` (``--fields``: every white cell found counts) or ``images`` (one cell per image).
    Unfamiliar cells (:mod:`hematovision.modeling.unfamiliar`) are left out of ``counts`` and the
    differential (an analyzer's "unidentified" cells) until a person classifies them; flagged
    low-confidence cells stay in. ``expected_unfamiliar``: the model's in-domain unfamiliar share
    (``TrustModel.expected_share``), ``None`` when it has no trust statistics (``unfamiliar_checked`` false,
    no domain-shift verdict). ``reference_scores``: the model's validation unfamiliarity scores
    (``TrustModel.val_scores``); with them the verdict also compares the classified cells' scores
    (``scores``, collected as they are counted) with validation's; ``reference_sources``
    (``TrustModel.val_sources``) and the cells' nearest sources (``sources``) make that comparison
    source-matched. ``domain_shift`` (JSON): ``{"detected", "score", "threshold", "n", "message", "p_value",
    "expected", "unfamiliar", "rank", "rank_p_value", "rank_threshold", "reason", "rank_source"}`` over the
    classified cells (:mod:`hematovision.stats.domain_shift`); the score and source lists are not written.
    ``batch_held``: the batch hold was applied (:meth:`hold`); ``held``: how many predictions it flagged that were
    otherwise accepted (counted in ``flagged`` too).
    """

    unit: str
    model_version: str
    threshold: float
    classes: list[str]
    inputs: int = 0
    errors: int = 0
    classified: int = 0
    flagged: int = 0
    unfamiliar: int = 0
    low_confidence: int = 0
    batch_held: bool = False
    held: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    expected_unfamiliar: float | None = None
    fields_without_cells: int = 0
    partial_cells: int = 0
    per_field: list[dict] = field(default_factory=list)
    reference_scores: Sequence[float] | None = None
    reference_sources: Sequence[str] | None = None
    scores: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def differential(self) -> dict[str, dict[str, float]]:
        n = sum(self.counts.get(c, 0) for c in self.classes)
        return {
            c: {"count": self.counts.get(c, 0), "percent": round(100.0 * self.counts.get(c, 0) / n, 2) if n else 0.0}
            for c in self.classes
        }

    @property
    def unfamiliar_checked(self) -> bool:
        return self.expected_unfamiliar is not None

    def domain_shift(self):
        """The batch's :class:`~hematovision.stats.domain_shift.DomainShift` over the classified cells."""
        return domain_shift_counts(
            self.unfamiliar,
            self.classified,
            self.expected_unfamiliar,
            scores=self.scores,
            reference=self.reference_scores,
            sources=self.sources if self.reference_sources is not None and all(self.sources) else None,
            reference_sources=self.reference_sources,
        )

    def hold(self) -> int:
        """The batch hold: when :meth:`domain_shift` detects a shift, every classified prediction counts as
        flagged, as the results file's rows then are (``reports.results_file.hold_results``). How many were
        accepted before and held now (0 when the batch is not called shifted)."""
        if self.batch_held or not self.domain_shift().detected:
            return 0
        self.batch_held = True
        self.held = self.classified - self.flagged
        self.flagged = self.classified
        for entry in self.per_field:
            entry["flagged"] = entry["cells"]
        return self.held

    def as_dict(self) -> dict:
        d = asdict(replace(self, reference_scores=None, reference_sources=None, scores=[], sources=[]))
        for k in ("expected_unfamiliar", "reference_scores", "reference_sources", "scores", "sources"):
            d.pop(k)
        d["differential"] = self.differential
        d["differential_cells"] = sum(self.counts.get(c, 0) for c in self.classes)
        d["unfamiliar_checked"] = self.unfamiliar_checked
        d["domain_shift"] = self.domain_shift().to_dict()
        if self.unit != "cells":
            for k in ("fields_without_cells", "partial_cells", "per_field"):
                d.pop(k)
        else:
            d["fields"] = d.pop("inputs")
            d["cells"] = d.pop("classified")
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def _add_score(self, p: Prediction) -> None:
        if not math.isnan(p.unfamiliarity):
            self.scores.append(p.unfamiliarity)
            self.sources.append(p.near_source)

    def add_field(self, r: FieldResult) -> None:
        """Count one field's cells (a run with ``--fields``)."""
        self.inputs += 1
        entry = {
            "file": r.file,
            "cells": len(r.cells),
            "partial": sum(c.box.partial for c in r.cells),
            "flagged": sum(c.prediction.flagged for c in r.cells),
            "unfamiliar": sum(c.prediction.unfamiliar for c in r.cells),
            "counts": {
                c: sum(x.prediction.predicted_class == c and not x.prediction.unfamiliar for x in r.cells)
                for c in self.classes
            },
        }
        if r.error:
            self.errors += 1
            entry["error"] = r.error
        elif not r.cells:
            self.fields_without_cells += 1
        self.classified += len(r.cells)
        self.flagged += entry["flagged"]
        self.unfamiliar += entry["unfamiliar"]
        self.low_confidence += sum(c.prediction.flag_reason == "low_confidence" for c in r.cells)
        self.partial_cells += entry["partial"]
        for c in r.cells:
            self._add_score(c.prediction)
        for c in self.classes:
            self.counts[c] = self.counts.get(c, 0) + entry["counts"][c]
        self.per_field.append(entry)

    def add_image(self, p: Prediction) -> None:
        """Count one single-cell image's prediction."""
        self.inputs += 1
        if not p.ok:
            self.errors += 1
            return
        self.classified += 1
        self.flagged += bool(p.flagged)
        self.unfamiliar += bool(p.unfamiliar)
        self.low_confidence += p.flag_reason == "low_confidence"
        self._add_score(p)
        if p.unfamiliar:
            return  # unidentified: left out of the differential until a person classifies it
        if p.predicted_class in self.classes:
            self.counts[p.predicted_class] = self.counts.get(p.predicted_class, 0) + 1


def _empty_summary(
    unit: str,
    classes: Sequence[str],
    threshold: float,
    version: str,
    expected_unfamiliar: float | None,
    reference_scores: Sequence[float] | None,
    reference_sources: Sequence[str] | None,
) -> RunSummary:
    return RunSummary(
        unit, version, float(threshold), list(classes), counts=dict.fromkeys(classes, 0),
        expected_unfamiliar=expected_unfamiliar, reference_scores=reference_scores,
        reference_sources=reference_sources,
    )


def summarise_fields(
    results: Iterable[FieldResult],
    classes: Sequence[str],
    threshold: float,
    version: str,
    expected_unfamiliar: float | None = None,
    reference_scores: Sequence[float] | None = None,
    reference_sources: Sequence[str] | None = None,
) -> RunSummary:
    s = _empty_summary("cells", classes, threshold, version, expected_unfamiliar, reference_scores, reference_sources)
    for r in results:
        s.add_field(r)
    return s


def summarise_images(
    preds: Iterable[Prediction],
    classes: Sequence[str],
    threshold: float,
    version: str,
    expected_unfamiliar: float | None = None,
    reference_scores: Sequence[float] | None = None,
    reference_sources: Sequence[str] | None = None,
) -> RunSummary:
    s = _empty_summary("images", classes, threshold, version, expected_unfamiliar, reference_scores, reference_sources)
    for p in preds:
        s.add_image(p)
    return s

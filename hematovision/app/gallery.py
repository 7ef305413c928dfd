"""The cell gallery of the dashboard: the report's gallery (:func:`hematovision.reports.content.build_report`)
as tiles to lay out.

Free of Streamlit. The Classify page shows its batch, the Review page its queue; both go
through :func:`hematovision.reports.content.build_report`, so the dashboard's groups, marks and counts are the
PDF's. A tile is the framed cell (what the network saw) inside a coloured frame: orange when
flagged and not yet reviewed, blue when a reviewer changed the class (or called it unusable), green
when a reviewer confirmed it, none otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..reports import tables as report
from ..reports.content import THUMB_PX, UNIDENTIFIED, GalleryCell, ModelInfo, ReportContent, build_report
from ..review.store import UNUSABLE, Item
from ..serving.classifier import Prediction

BORDER = 6
FLAGGED_RGB = (217, 119, 6)
CHANGED_RGB = (29, 78, 216)
CONFIRMED_RGB = (22, 101, 52)
MISSING_RGB = (226, 229, 233)
#: How many framed pictures a session keeps (each about 50 KB).
CACHE_LIMIT = 5000


@dataclass(frozen=True)
class Tile:
    position: int  # the cell's row position (0-based) in the results the gallery was built from
    sha256: str
    model_version: str
    image: np.ndarray  # RGB uint8 with the coloured frame; a grey square when the picture is not available
    caption: str
    flagged: bool
    reviewed: bool


@dataclass(frozen=True)
class TileGroup:
    name: str  # a class, "unidentified" or "unusable"
    title: str
    tiles: tuple[Tile, ...]


def _framed(cell: GalleryCell) -> np.ndarray:
    rgb = cell.image if cell.image is not None else np.full((THUMB_PX, THUMB_PX, 3), MISSING_RGB, np.uint8)
    if cell.action in ("reclassified", UNUSABLE):
        colour = CHANGED_RGB
    elif cell.action == "confirmed":
        colour = CONFIRMED_RGB
    elif cell.flagged:
        colour = FLAGGED_RGB  # flagged and not yet reviewed
    else:
        colour = None
    if colour is None:
        return np.pad(rgb, ((BORDER, BORDER), (BORDER, BORDER), (0, 0)), constant_values=255)
    out = np.empty((rgb.shape[0] + 2 * BORDER, rgb.shape[1] + 2 * BORDER, 3), np.uint8)
    out[:] = colour
    out[BORDER:-BORDER, BORDER:-BORDER] = rgb
    return out


def _caption(cell: GalleryCell) -> str:
    text = f"#{cell.number} · {cell.confidence:.2f}"
    if cell.action == "reclassified":
        text += f" · was {cell.predicted_class}"
    elif cell.action == UNUSABLE:
        text += f" · unusable (was {cell.predicted_class})"
    elif cell.action == "confirmed":
        text += " · confirmed"
    elif cell.flagged:
        text += " · flagged"
    if cell.image is None:
        text += " · image not available"
    return text


def tiles(content: ReportContent) -> list[TileGroup]:
    """The report's gallery groups as tiles, in the report's order."""
    names = {UNIDENTIFIED: "unidentified / unfamiliar", UNUSABLE: "not a white cell / unusable"}
    out = []
    for g in content.gallery:
        n_flag = sum(c.flagged and not c.reviewed for c in g.cells)
        title = f"{names.get(g.name, g.name)} · {len(g.cells)} cell{'s' if len(g.cells) != 1 else ''}"
        title += f" ({n_flag} flagged, not reviewed)" if n_flag else ""
        out.append(
            TileGroup(
                g.name,
                title,
                tuple(
                    Tile(c.number - 1, c.sha256, c.model_version, _framed(c), _caption(c), c.flagged, c.reviewed)
                    for c in g.cells
                ),
            )
        )
    return out


def _bounded(cache: MutableMapping | None) -> MutableMapping | None:
    if cache is not None and len(cache) > CACHE_LIMIT:
        cache.clear()
    return cache


def batch_gallery(
    frame: pd.DataFrame,
    image_of: Callable[[str], bytes | None],
    model: ModelInfo,
    framed: MutableMapping | None = None,
) -> list[TileGroup]:
    """The Classify page's results (reviews already applied) as tile groups; ``image_of``: bytes by sha256."""
    content = build_report(
        frame,
        images=lambda file, sha: image_of(sha) if sha else None,
        model=model,
        framed=_bounded(framed),
        source="dashboard batch",
    )
    return tiles(content)


def review_frame(items: Sequence[Item]) -> pd.DataFrame:
    """Queued review items as ``classify`` results with their current decisions applied."""
    classes = list(items[0].classes) if items else []
    preds = [
        Prediction(it.file, it.predicted_class, it.confidence, tuple(it.probabilities), it.flagged, "", it.sha256)
        for it in items
    ]
    frame = report.predictions_frame(preds, classes)
    frame = report.with_reviews(frame, {it.sha256: it.decision for it in items if it.decision is not None})
    frame["model_version"] = [it.model_version for it in items]
    return frame


def review_gallery(
    items: Sequence[Item],
    image_of: Callable[[Item], bytes | None],
    model: ModelInfo,
    framed: MutableMapping | None = None,
) -> list[TileGroup]:
    """The Review page's queue (as filtered) as tile groups.

    ``image_of``: an item's image bytes (the original while its batch is in the session, else the stored thumbnail).
    """
    if not items:
        return []
    by_sha = {(it.sha256, it.model_version): it for it in items}
    versions = {it.model_version for it in items}

    def lookup(file: str, sha: str) -> bytes | None:
        it = next((by_sha[(sha, v)] for v in versions if (sha, v) in by_sha), None)
        return image_of(it) if it is not None else None

    content = build_report(
        review_frame(items), images=lookup, model=model, framed=_bounded(framed), source="review queue"
    )
    return tiles(content)

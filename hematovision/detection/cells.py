"""Classify every white cell of whole smear fields: detect, crop, then the single-image path.

One code path: each found cell is cut out of the field with a margin (:func:`crop_cell`) and handed
to :meth:`Classifier.predict_cells` (probabilities, flag and unfamiliarity), which frames it exactly as a
single-cell image (``framing.model_input`` with the model card's framing and input size). Fields are
read, decoded and searched for cells in worker threads while the previous chunk's cells run through
the network, so memory stays bounded for any number of fields.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from ..imaging.decode import thumbnail
from ..imaging.limits import DEFAULT_LIMITS, ImageLimits
from ..imaging.sources import ImageInput, load_input
from ..serving.classifier import Classifier, Prediction, chunks
from .wbc import DEFAULT_PARAMS, CellBox, DetectorParams, analyse_field

#: The crop around a found cell reaches this share of the box's longer side beyond it on each side,
#: so the framing step sees the whole cell and some background around it.
CROP_MARGIN = 0.25
#: Fields prepared per chunk (the network sees all their cells in one batch).
CHUNK = 8
NO_CELL_NOTE = "no white cell found in this field"


def cell_key(field_sha256: str, box: CellBox) -> str:
    """The review key of one cell: its field's content hash and its box (``<sha256>#x0,y0,x1,y1``).

    The review store keys decisions by a text ``sha256`` column; a cell's key lives there unchanged,
    so a field's cells are reviewed one by one and a re-run that finds the same box finds its review.
    """
    return f"{field_sha256}#{box.x0},{box.y0},{box.x1},{box.y1}"


def crop_cell(rgb: np.ndarray, box: CellBox, margin: float = CROP_MARGIN) -> np.ndarray:
    """The box and a margin around it, cut from the field (clipped to the image)."""
    h, w = rgb.shape[:2]
    m = margin * max(box.width, box.height)
    x0, y0 = max(0, int(box.x0 - m)), max(0, int(box.y0 - m))
    x1, y1 = min(w, int(np.ceil(box.x1 + m))), min(h, int(np.ceil(box.y1 + m)))
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


@dataclass(frozen=True)
class CellResult:
    """One white cell: where it is and what the model says (``prediction.sha256`` is :func:`cell_key`)."""

    index: int  # 1-based within its field, top to bottom
    box: CellBox
    prediction: Prediction


@dataclass(frozen=True)
class FieldResult:
    """One field: its cells in order, or an error (unreadable file); no cells means none was found."""

    file: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    cells: tuple[CellResult, ...] = ()
    error: str = ""
    note: str = ""
    rbc_diameter: float = float("nan")
    thumbnail: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class _Prepared:
    item: ImageInput
    sha256: str = ""
    size: tuple[int, int] = (0, 0)
    boxes: list[CellBox] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    thumbs: list[np.ndarray | None] = field(default_factory=list)
    field_thumb: np.ndarray | None = None
    rbc: float = float("nan")
    error: str = ""
    note: str = ""


def _prepare(item: ImageInput, limits: ImageLimits, params: DetectorParams, thumbnails: bool) -> _Prepared:
    """Read, hash, decode and search one field in a worker thread; never raises."""
    got = load_input(item, limits)
    dec = got.decoded
    if dec is None:
        return _Prepared(item, got.sha256, error=got.error)
    sha = got.sha256
    rgb = dec.rgb
    try:
        found = analyse_field(rgb, params)
    except Exception as exc:  # defensive: one odd field must not take the batch down
        return _Prepared(item, sha, error=f"white-cell search failed ({type(exc).__name__})")
    crops = [crop_cell(rgb, b) for b in found.boxes]
    thumbs = [thumbnail(c) if thumbnails else None for c in crops]
    return _Prepared(
        item,
        sha,
        (rgb.shape[1], rgb.shape[0]),
        found.boxes,
        crops,
        thumbs,
        thumbnail(rgb, 256) if thumbnails else None,
        found.rbc_diameter,
        note=dec.note,
    )


def classify_fields(
    clf: Classifier,
    inputs: Iterable[ImageInput],
    threshold: float | None = None,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    params: DetectorParams = DEFAULT_PARAMS,
    thumbnails: bool = False,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
) -> Iterator[FieldResult]:
    """Yield one :class:`FieldResult` per input, in input order; bad inputs become error results."""
    thr = clf.default_threshold if threshold is None else float(threshold)
    done = 0
    pending: deque[list] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def finish_one():
            nonlocal done
            for r in _finish(clf, [f.result() for f in pending.popleft()], thr):
                done += 1
                if progress:
                    progress(done)
                yield r

        for chunk in chunks(inputs, CHUNK):
            pending.append([pool.submit(_prepare, it, limits, params, thumbnails) for it in chunk])
            if len(pending) > 1:
                yield from finish_one()
        while pending:
            yield from finish_one()


def _finish(clf: Classifier, prepared: list[_Prepared], threshold: float) -> list[FieldResult]:
    crops = [c for p in prepared for c in p.crops]
    preds = clf.predict_cells(crops, threshold) if crops else []  # class, confidence, flag, unfamiliar
    out, k = [], 0
    for p in prepared:
        if p.error:
            out.append(FieldResult(p.item.name, p.sha256, error=p.error, note=p.note))
            continue
        cells = []
        for i, (box, thumb) in enumerate(zip(p.boxes, p.thumbs), start=1):
            pred = replace(
                preds[k],
                file=p.item.name,
                sha256=cell_key(p.sha256, box),
                note="partial cell (cut by the image edge)" if box.partial else "",
                thumbnail=thumb,
            )
            k += 1
            cells.append(CellResult(i, box, pred))
        note = "; ".join(x for x in (p.note, "" if cells else NO_CELL_NOTE) if x)
        out.append(
            FieldResult(p.item.name, p.sha256, p.size[0], p.size[1], tuple(cells), "", note, p.rbc, p.field_thumb)
        )
    return out


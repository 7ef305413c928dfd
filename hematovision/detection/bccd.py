"""The BCCD smear fields: Pascal-VOC boxes, the white cell's class, a recorded split, box scoring.

BCCD (``blood-cells/dataset-master`` under the data root) holds 366 fields of 640x480 with
annotations for 364 of them: boxes for white cells (``WBC``), red cells and platelets, and in
``labels.csv`` the white cell's class per field. The split into ``dev`` (tuning) and ``test`` (reported,
never tuned on) is by a hash of the file name, so it does not depend on listing order or on the data
copy, and is recorded in ``bccd_split.csv`` beside this module.
"""

from __future__ import annotations

import csv
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .wbc import box_iou

BCCD_DIR = Path("blood-cells") / "dataset-master"
SPLIT_FILE = Path(__file__).with_name("bccd_split.csv")
#: Share of fields in ``dev``; the rest are ``test``.
DEV_SHARE = 0.70
IOU_MATCH = 0.5
CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Field:
    """One annotated BCCD field."""

    name: str  # e.g. BloodImage_00000
    image: Path
    width: int
    height: int
    wbc: tuple[Box, ...]
    label: str  # the white cell's class when labels.csv gives exactly one of CLASSES, else ""

    @property
    def split(self) -> str:
        return split_of(self.name)


def split_of(name: str) -> str:
    """``dev`` or ``test``, from the sha256 of the field's name (stable across copies and orderings)."""
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return "dev" if h / 0x1_0000_0000 < DEV_SHARE else "test"


def _labels(path: Path) -> dict[int, str]:
    """Field number -> class, where ``labels.csv`` names exactly one of :data:`CLASSES`."""
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                idx = int(row["Image"])
            except (KeyError, ValueError):
                continue
            names = [c.strip().lower() for c in (row.get("Category") or "").split(",") if c.strip()]
            if len(names) == 1 and names[0] in CLASSES:
                out[idx] = names[0]
    return out


def read_fields(root: Path) -> list[Field]:
    """Every annotated field under the data ``root``, by name."""
    base = Path(root) / BCCD_DIR
    labels = _labels(base / "labels.csv")
    fields = []
    for xml in sorted((base / "Annotations").glob("*.xml")):
        r = ET.parse(xml).getroot()
        name = xml.stem
        image = base / "JPEGImages" / f"{name}.jpg"
        if not image.is_file():
            continue
        size = r.find("size")
        w, h = int(size.findtext("width")), int(size.findtext("height"))
        boxes = []
        for o in r.iter("object"):
            if (o.findtext("name") or "").strip() != "WBC":
                continue
            b = o.find("bndbox")
            boxes.append(tuple(int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
        try:
            num = int(name.rsplit("_", 1)[1])
        except (IndexError, ValueError):
            num = -1
        fields.append(Field(name, image, w, h, tuple(boxes), labels.get(num, "")))
    return fields


def write_split(fields: Sequence[Field], path: Path = SPLIT_FILE) -> None:
    """Record the split: one row per field with its split, white-cell count and class."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["field", "split", "wbc_boxes", "label"])
        for f in sorted(fields, key=lambda f: f.name):
            w.writerow([f.name, f.split, len(f.wbc), f.label])


def read_split(path: Path = SPLIT_FILE) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {r["field"]: r["split"] for r in csv.DictReader(fh)}


@dataclass(frozen=True)
class Match:
    """Greedy one-to-one matching of found boxes to annotated ones at IoU >= :data:`IOU_MATCH`."""

    pairs: tuple[tuple[int, int, float], ...]  # (found index, annotated index, IoU)
    n_found: int
    n_truth: int

    @property
    def tp(self) -> int:
        return len(self.pairs)


def match_boxes(found: Sequence[Box], truth: Sequence[Box], iou: float = IOU_MATCH) -> Match:
    """Pairs with the highest IoU first, each box used once."""
    cand = sorted(((box_iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, used_t, pairs = set(), set(), []
    for v, i, j in cand:
        if v < iou:
            break
        if i in used_f or j in used_t:
            continue
        used_f.add(i)
        used_t.add(j)
        pairs.append((i, j, v))
    return Match(tuple(pairs), len(found), len(truth))


@dataclass(frozen=True)
class BoxScore:
    fields: int
    truth: int
    found: int
    matched: int

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else float("nan")

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else float("nan")

    def as_dict(self) -> dict:
        return {
            "fields": self.fields,
            "wbc_boxes": self.truth,
            "found": self.found,
            "matched": self.matched,
            "recall": round(self.recall, 4),
            "precision": round(self.precision, 4),
        }


def score(matches: Iterable[Match]) -> BoxScore:
    ms = list(matches)
    return BoxScore(len(ms), sum(m.n_truth for m in ms), sum(m.n_found for m in ms), sum(m.tp for m in ms))


@dataclass
class SetResult:
    """Boxes and classes of one split of BCCD under one colouring."""

    boxes: BoxScore
    class_fields: int  # fields with one labelled class and one annotated white cell
    class_found: int  # ... whose white cell was found (IoU >= 0.5)
    class_correct: int  # ... and classified as labelled
    missed: list[str]
    extra: list[str]

    def as_dict(self) -> dict:
        d = self.boxes.as_dict()
        d.update(
            class_fields=self.class_fields,
            class_found=self.class_found,
            class_correct=self.class_correct,
            class_accuracy=round(self.class_correct / self.class_found, 4) if self.class_found else None,
        )
        return d


def evaluate(fields: Sequence[Field], results: Sequence, recolour_name: str = "") -> SetResult:
    """Score :class:`~.cells.FieldResult` s (same order as ``fields``) against the annotations."""
    matches, missed, extra = [], [], []
    n_cls = n_found = n_ok = 0
    for f, r in zip(fields, results):
        found = [(c.box.x0, c.box.y0, c.box.x1, c.box.y1) for c in r.cells]
        m = match_boxes(found, f.wbc)
        matches.append(m)
        if m.tp < m.n_truth:
            missed.append(f.name)
        if m.tp < m.n_found:
            extra.append(f.name)
        if f.label and len(f.wbc) == 1:
            n_cls += 1
            if m.pairs:
                n_found += 1
                n_ok += r.cells[m.pairs[0][0]].prediction.predicted_class == f.label
    return SetResult(score(matches), n_cls, n_found, n_ok, missed, extra)

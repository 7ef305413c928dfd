"""Examples of what is *not* a white cell, for fitting and measuring the unfamiliar-cell score.

* **BCCD crops** (``blood-cells/dataset-master``: 366 smear fields, 640x480, with boxes labeled
  ``RBC``, ``Platelets`` and ``WBC``): a square around each box, side :data:`CROP_SCALE` x the box's
  longer side (the scale :mod:`hematovision.imaging.framing` cuts a white cell at), so a red cell or a
  platelet arrives the way a detector or a careless crop would send it.
* **Background**: squares of a field that overlap no box.
* **Blurred** and **cut** cells: a white-cell image defocused far past any training augmentation,
  or only a corner strip of it (the cell mostly outside the crop).

BCCD fields are split by image number (even: fitting, odd: measuring; :func:`bccd_half`), so the
figures reported for the score are on fields it never saw. (The boxes of every kind are read here;
:mod:`hematovision.detection.bccd` reads the white cells' labels for the detector.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..detection.bccd import BCCD_DIR

CROP_SCALE = 2.0
KINDS = ("RBC", "Platelets", "WBC")


@dataclass(frozen=True)
class Crop:
    field: str  # the BCCD image's stem
    kind: str  # RBC, Platelets, WBC or background
    rgb: np.ndarray


def bccd_boxes(root: Path) -> Iterator[tuple[Path, list[tuple[str, int, int, int, int]]]]:
    """``(jpeg path, [(kind, xmin, ymin, xmax, ymax), ...])`` per annotated field, in name order."""
    base = Path(root) / BCCD_DIR
    for xml in sorted((base / "Annotations").glob("*.xml")):
        img = base / "JPEGImages" / f"{xml.stem}.jpg"
        if not img.is_file():
            continue
        try:
            tree = ET.parse(xml)
        except ET.ParseError:
            continue
        boxes = []
        for obj in tree.getroot().iter("object"):
            bb = obj.find("bndbox")
            name = (obj.findtext("name") or "").strip()
            if bb is None or name not in KINDS:
                continue
            try:
                x0, y0, x1, y1 = (int(float(bb.findtext(t) or "nan")) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                continue
            if x1 > x0 and y1 > y0:
                boxes.append((name, x0, y0, x1, y1))
        yield img, boxes


def bccd_half(stem: str) -> str:
    """``"fit"`` for even-numbered BCCD fields, ``"measure"`` for odd ones."""
    digits = "".join(ch for ch in stem if ch.isdigit())
    return "fit" if digits and int(digits) % 2 == 0 else "measure"


def _read(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def square(rgb: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """A square of ``side`` px centred at (cx, cy), clipped to the image."""
    h, w = rgb.shape[:2]
    half = max(4.0, side / 2)
    x0, x1 = int(max(0, cx - half)), int(min(w, cx + half))
    y0, y1 = int(max(0, cy - half)), int(min(h, cy + half))
    return rgb[y0:y1, x0:x1].copy()


def bccd_crops(
    root: Path,
    kinds: tuple[str, ...] = ("RBC", "Platelets"),
    per_image: int = 3,
    half: str | None = None,
    seed: int = 0,
) -> list[Crop]:
    """Crops around BCCD boxes of ``kinds``: at most ``per_image`` of each kind per field (chosen at random)."""
    rng = np.random.default_rng(seed)
    out = []
    for img, boxes in bccd_boxes(root):
        if half is not None and bccd_half(img.stem) != half:
            continue
        rgb = None
        for kind in kinds:
            mine = [b for b in boxes if b[0] == kind]
            if not mine:
                continue
            rgb = _read(img) if rgb is None else rgb
            if rgb is None:
                break
            for j in rng.permutation(len(mine))[:per_image]:
                _, x0, y0, x1, y1 = mine[j]
                side = CROP_SCALE * max(x1 - x0, y1 - y0)
                crop = square(rgb, (x0 + x1) / 2, (y0 + y1) / 2, side)
                if min(crop.shape[:2]) >= 16:
                    out.append(Crop(img.stem, kind, crop))
    return out


def background_crops(root: Path, side: int = 96, tries: int = 40, half: str | None = None, seed: int = 0) -> list[Crop]:
    """At most one ``side``-px square per BCCD field that overlaps none of its boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for img, boxes in bccd_boxes(root):
        if half is not None and bccd_half(img.stem) != half:
            continue
        rgb = _read(img)
        if rgb is None:
            continue
        h, w = rgb.shape[:2]
        for _ in range(tries):
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            if all(x + side <= b[1] or x >= b[3] or y + side <= b[2] or y >= b[4] for b in boxes):
                out.append(Crop(img.stem, "background", rgb[y : y + side, x : x + side].copy()))
                break
    return out


def heavy_blur(rgb: np.ndarray, sigma_per_360: float = 9.0) -> np.ndarray:
    """Defocused far past training's augmentation (which blurs up to about 1.9 px per 360 px)."""
    return cv2.GaussianBlur(rgb, (0, 0), sigma_per_360 * max(rgb.shape[:2]) / 360.0)


def cut_cell(rgb: np.ndarray, k: int = 0, keep: float = 0.3) -> np.ndarray:
    """Only a strip along one edge (``keep`` of the width or height; the edge turns with ``k``):
    the cell mostly outside the crop."""
    h, w = rgb.shape[:2]
    side = k % 4
    if side == 0:
        return rgb[:, : max(8, int(w * keep))].copy()
    if side == 1:
        return rgb[:, w - max(8, int(w * keep)) :].copy()
    if side == 2:
        return rgb[: max(8, int(h * keep))].copy()
    return rgb[h - max(8, int(h * keep)) :].copy()

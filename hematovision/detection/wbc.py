"""Find every white cell in a smear field: a box around each whole cell, cytoplasm included.

Why not ``B - G``: that finds purple nuclei on a white background, the look of one stain under one
lamp. Another laboratory's nuclei may be reddish-brown on a yellow background, or the whole field may
have a blue-green cast. What holds across stains is *relative*: on any Romanowsky-type smear, the
nucleus is the most strongly stained thing in the field, and stained differently from the red cells
that fill the rest of it. So everything here is measured against the field itself:

1. **Working copy.** The field is shrunk (area averaging) to at most :data:`FIRST_SIDE` px, the red
   cells' size is estimated there (:func:`red_cell_diameter`), and the copy is shrunk again so a red
   cell is about :data:`TARGET_RBC` px across. Every size rule below is in red-cell units, so a 640x480
   analyzer field and a 4000x3000 phone photograph are treated alike, at a bounded cost.
2. **Background** (:func:`background_colour`): the median colour of the field's brightest tenth.
3. **Optical density** relative to that background, per channel: ``OD = ln(bg / I)``. A colour cast
   of the lamp or camera divides out.
4. **Nucleus map** (:func:`nucleus_map`): the red cells' stain direction is the median direction of
   the foreground's OD vectors (red cells are most of the stained area). A pixel's nucleus score is
   the part of its OD vector *not* along that direction (the second stain), plus a share of its total
   density (nuclei are the darkest things in the field). Purple-on-pink, brown-on-tan and
   magenta-on-green score alike.
5. **Threshold** at a level relative to the field's own red cells (a high percentile of their score)
   and to Otsu's split of the stained pixels, whichever is higher; opening removes specks; closing
   (a third of a red cell) merges the lobes of one nucleus.
6. **Size rules** in red-cell areas: platelets and stain specks are far smaller than a white cell's
   nucleus; a clump bigger than a few white cells is debris or a thick region.
7. **Touching cells**: a nucleus region too large for one cell is split by a watershed on its distance
   transform, seeded by peaks at least a red cell apart.
8. **Box**: the nucleus's box, grown by a margin in red-cell units towards the cytoplasm (BCCD's WBC
   boxes hold the whole cell), clipped to the image; ``partial`` when it touches the image edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

#: The first working copy's longer side (px): enough to measure red cells on a 4000x3000 photograph.
FIRST_SIDE = 256
#: Red-cell diameter (px) in the working copy the detection runs on.
TARGET_RBC = 30.0
#: A field's stained share below which the foreground split is taken to have cut off the red cells.
MIN_FOREGROUND = 0.15
#: Never work on a copy smaller than this on its longer side (a field with huge cells: keep detail).
MIN_WORK_SIDE = 160


@dataclass(frozen=True)
class CellBox:
    """A white cell found in a field, in the original image's pixels (``x1``, ``y1`` exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    partial: bool  # the box touches the image edge: the cell may be cut
    score: float  # how strongly the nucleus stands out (>= 1; higher is surer)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def iou(self, other: CellBox | tuple[float, float, float, float]) -> float:
        return box_iou((self.x0, self.y0, self.x1, self.y1), _xyxy(other))


def _xyxy(b) -> tuple[float, float, float, float]:
    return (b.x0, b.y0, b.x1, b.y1) if isinstance(b, CellBox) else tuple(b)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


@dataclass(frozen=True)
class DetectorParams:
    """The detector's settings; the defaults were chosen on the BCCD dev split (``docs/fields.md``)."""

    #: nucleus score = off-red-cell density + this share of the total density
    density_weight: float = 0.0
    #: the threshold is this multiple of the stained area's median score (mostly red cells)
    rbc_score_factor: float = 4.5
    #: and never below this (OD units)
    min_score: float = 0.08
    #: nor below this share of the field's strongest score (a nucleus's), which keeps pale cytoplasm out
    peak_share: float = 0.4
    #: closing diameter (red-cell diameters) that merges the lobes of one nucleus
    merge: float = 0.35
    #: a nucleus region smaller than this (red-cell areas) is a platelet or a speck
    min_area: float = 0.4
    #: nucleus pixels must fill at least this share of their merged region (platelet clumps fill less)
    min_fill: float = 0.7
    #: one cell's nucleus region is at most this (red-cell areas); larger is split or, past max_area, dropped
    split_area: float = 2.5
    max_area: float = 12.0
    #: a split needs distance-transform peaks at least this deep (red-cell diameters: a whole
    #: nucleus, not a lobe) and parts at least this large (red-cell areas)
    split_peak: float = 0.3
    split_min_part: float = 0.6
    #: nucleus pieces of two cells have centres at least this far apart (red-cell diameters)
    split_dist: float = 0.9
    #: and a gap between them of at least this (red-cell diameters; a nucleus's lobes nearly touch)
    split_gap: float = 0.28
    #: the box grows from the nucleus by this many red-cell diameters on each side
    margin: float = 0.2
    #: and is at least this many red-cell diameters on a side
    min_cell: float = 1.1


DEFAULT_PARAMS = DetectorParams()


@dataclass
class FieldAnalysis:
    """What the detector measured on a field (for drawing and diagnosis)."""

    boxes: list[CellBox]
    rbc_diameter: float  # in original pixels
    background: tuple[float, float, float]
    scale: float  # working copy pixels per original pixel
    threshold: float = 0.0
    mask: np.ndarray | None = field(default=None, repr=False)  # nucleus mask on the working copy


def _shrink(rgb: np.ndarray, f: float) -> np.ndarray:
    if f >= 1.0:
        return rgb
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """The median colour of the brightest tenth of the field (its background), float32 RGB."""
    flat = rgb.reshape(-1, 3)
    sample = flat[:: max(1, len(flat) // 20_000)]  # a sample is plenty
    bright = sample.astype(np.int32).sum(axis=1)
    cut = np.partition(bright, int(0.9 * (len(bright) - 1)))[int(0.9 * (len(bright) - 1))]
    return np.median(sample[bright >= cut], axis=0).astype(np.float32)


def optical_density(rgb: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """``ln(background / I)`` per channel, clipped at 0 (brighter than background is no stain); float32."""
    levels = np.log(np.arange(256, dtype=np.float32) + 1.0)
    out = np.empty(rgb.shape, np.float32)
    for c in range(3):  # a lookup table per channel: 10x cheaper than a logarithm per pixel
        lut = np.maximum(np.log(float(bg[c]) + 1.0) - levels, 0.0).astype(np.float32)
        out[..., c] = lut[rgb[..., c]]
    return out


def _otsu(values: np.ndarray) -> float:
    v = np.clip(values * 100, 0, 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(v, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return t / 100


def _foreground(od_sum: np.ndarray) -> np.ndarray:
    """Stained pixels (cells), by Otsu on the total density, with a floor for near-empty fields.

    Where nuclei are far darker than pale red cells, Otsu splits nuclei from everything else; when
    that leaves under :data:`MIN_FOREGROUND` of the field stained, the split is made again among the
    lighter pixels (background against red cells).
    """
    t = _otsu(od_sum)
    if (od_sum > t).mean() < MIN_FOREGROUND:
        lighter = od_sum[od_sum <= t]
        if lighter.size:
            t = _otsu(lighter)
    return od_sum > max(t, 0.12)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` (uint8 0/1) with enclosed holes filled (a red cell's pale centre)."""
    inv = (1 - mask).astype(np.uint8)
    n, lab = cv2.connectedComponents(inv, connectivity=4)
    outside = np.zeros(n, bool)
    outside[lab[0]] = outside[lab[-1]] = outside[lab[:, 0]] = outside[lab[:, -1]] = True
    outside[0] = True  # label 0 is the mask itself
    return np.where(outside[lab], mask, 1).astype(np.uint8)


def red_cell_diameter(rgb: np.ndarray, bg: np.ndarray | None = None) -> float | None:
    """The typical red cell's diameter (px) in ``rgb``, or ``None`` where no cells stand out.

    A granulometry of the stained area (holes filled): the area that survives an opening by a disc
    of radius ``r`` shrinks as ``r`` passes the size of the objects. Red cells are most of the stained
    area, so the radius at which half of it is gone is a red cell's, even where red cells touch and
    form one large blob (an opening cuts their narrow contacts). Openings are computed with two
    distance transforms each, so a dozen radii cost a few milliseconds.
    """
    bg = background_colour(rgb) if bg is None else bg
    od_sum = cv2.GaussianBlur(optical_density(rgb, bg).sum(axis=2), (0, 0), 1.0)
    fg = _fill_holes(_foreground(od_sum).astype(np.uint8))
    total = int(fg.sum())
    if total < 50:
        return None
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    radii = np.unique(np.round(2 * 1.15 ** np.arange(0, 30)).astype(int))
    radii = radii[radii < min(rgb.shape[:2]) / 3]
    prev_r, prev = 0.0, total
    for r in radii:
        core = (dist >= r).astype(np.uint8)
        kept = int((cv2.distanceTransform(1 - core, cv2.DIST_L2, 5) <= r).sum()) if core.any() else 0
        if kept <= total / 2:  # interpolate between the last radius that kept more than half and this one
            frac = (prev - total / 2) / max(prev - kept, 1)
            return float(2 * (prev_r + frac * (r - prev_r)))
        prev_r, prev = float(r), kept
    return None


def nucleus_map(od: np.ndarray, fg: np.ndarray, density_weight: float) -> np.ndarray:
    """Per-pixel nucleus score: the density off the red cells' stain direction, plus some total density."""
    od_sum = od.sum(axis=2)
    pts = od[fg]
    if len(pts) < 20:
        return od_sum * density_weight
    norms = pts.sum(axis=1, keepdims=True) + 1e-6
    u = np.median(pts / norms, axis=0)
    u = u / (np.linalg.norm(u) + 1e-9)
    along = od @ u
    off = np.sqrt(np.maximum((od * od).sum(axis=2) - along * along, 0.0))
    return off + density_weight * od_sum


def analyse_field(rgb: np.ndarray, params: DetectorParams = DEFAULT_PARAMS, keep_mask: bool = False) -> FieldAnalysis:
    """Detect the white cells of an RGB ``uint8`` field (any size); see the module's docstring."""
    h, w = rgb.shape[:2]
    f1 = min(1.0, FIRST_SIDE / max(h, w))
    first = _shrink(rgb, f1)
    bg = background_colour(first)
    d1 = red_cell_diameter(first, bg)
    if d1 is None:  # no cells stand out at all
        return FieldAnalysis([], float("nan"), tuple(float(v) for v in bg), f1)
    rbc_orig = d1 / f1
    scale = min(1.0, max(TARGET_RBC / rbc_orig, MIN_WORK_SIDE / max(h, w)))
    work = _shrink(rgb, scale)
    rbc = rbc_orig * scale  # red-cell diameter in working pixels
    work = cv2.GaussianBlur(work, (0, 0), 0.7)
    od = optical_density(work, bg)
    fg = _foreground(od.sum(axis=2))
    score = cv2.GaussianBlur(nucleus_map(od, fg, params.density_weight), (0, 0), 0.8)
    ref = float(np.median(score[fg])) if fg.any() else 0.0
    peak = float(np.percentile(score, 99.9))
    thr = max(params.min_score, params.rbc_score_factor * ref, params.peak_share * peak)
    mask = (score > thr).astype(np.uint8)
    k_open = max(3, round(0.08 * rbc)) | 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_open, k_open)))
    k = max(3, round(params.merge * rbc)) | 1
    merged = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    rbc_area = np.pi / 4 * rbc * rbc
    boxes = []
    wh, ww = work.shape[:2]
    for ys, xs in _regions(merged, mask, rbc, rbc_area, params):
        strength = float(score[ys, xs].mean() / thr)
        m = params.margin * rbc
        bx0, by0, bx1, by1 = xs.min() - m, ys.min() - m, xs.max() + 1 + m, ys.max() + 1 + m
        side = params.min_cell * rbc
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        bw, bh = max(bx1 - bx0, side), max(by1 - by0, side)
        bx0, bx1, by0, by1 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
        x0, y0 = max(0, int(np.floor(bx0 / scale))), max(0, int(np.floor(by0 / scale)))
        x1, y1 = min(w, int(np.ceil(bx1 / scale))), min(h, int(np.ceil(by1 / scale)))
        partial = bx0 <= 0.5 or by0 <= 0.5 or bx1 >= ww - 0.5 or by1 >= wh - 0.5
        boxes.append(CellBox(x0, y0, x1, y1, bool(partial), round(strength, 3)))
    boxes.sort(key=lambda b: (b.y0 + b.y1, b.x0 + b.x1))
    return FieldAnalysis(boxes, rbc_orig, tuple(float(v) for v in bg), scale, thr, merged if keep_mask else None)


def _regions(
    merged: np.ndarray, mask: np.ndarray, rbc: float, rbc_area: float, params: DetectorParams
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pixel coordinates of each white cell's nucleus region: size rules, and touching cells split.

    Sizes count the nucleus pixels themselves (``mask``), not the gaps the closing bridged, so a
    scatter of platelets merged into one region stays small. Two cells whose nuclei the closing
    bridged are told apart by their nuclei: a region holding two or more separate nucleus pieces of a
    whole nucleus's size is divided between them (each pixel to the nearest); a lobe is far smaller.
    """
    n, lab, stats, _ = cv2.connectedComponentsWithStats(merged)
    nm, mlab, mstats, mcent = cv2.connectedComponentsWithStats(mask)
    big_piece = mstats[:, cv2.CC_STAT_AREA] >= params.split_min_part * rbc_area
    big_piece[0] = False
    out = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < params.min_area * rbc_area:
            continue
        ys, xs = np.nonzero(lab == i)
        pieces = mlab[ys, xs]
        area = int((pieces > 0).sum())
        if area < params.min_area * rbc_area or area > params.max_area * rbc_area:
            continue
        if area < params.min_fill * len(ys):  # scattered specks bridged by the closing: a platelet clump
            continue
        groups = _far_apart(
            ys,
            xs,
            pieces,
            [k for k in np.unique(pieces) if big_piece[k]],
            mcent,
            params.split_dist * rbc,
            params.split_gap * rbc,
        )
        if len(groups) >= 2:
            out.extend(_nearest_piece(ys, xs, pieces, groups))
        elif area <= params.split_area * rbc_area:
            out.append((ys, xs))
        else:
            out.extend(_split(ys, xs, rbc, rbc_area, params))
    return out


def _far_apart(
    ys: np.ndarray,
    xs: np.ndarray,
    pieces: np.ndarray,
    big: list[int],
    centroids: np.ndarray,
    min_dist: float,
    min_gap: float,
) -> list[list[int]]:
    """Group the large nucleus pieces of a region: one group per cell.

    Two pieces are lobes of one nucleus unless their centres are at least ``min_dist`` apart *and*
    the gap between them is at least ``min_gap`` (two cells' nuclei are kept apart by two rims of
    cytoplasm; a nucleus's lobes nearly touch).
    """
    if len(big) < 2:
        return [big] if big else []
    y0, x0 = ys.min(), xs.min()
    shape = (ys.max() - y0 + 1, xs.max() - x0 + 1)
    dists = {}
    for k in big:
        free = np.ones(shape, np.uint8)
        sel = pieces == k
        free[ys[sel] - y0, xs[sel] - x0] = 0
        dists[k] = cv2.distanceTransform(free, cv2.DIST_L2, 5)
    groups: list[list[int]] = []
    for k in big:

        def same_cell(j, k=k):
            sel = pieces == j
            gap = float(dists[k][ys[sel] - y0, xs[sel] - x0].min())
            return np.hypot(*(centroids[k] - centroids[j])) < min_dist or gap < min_gap

        near = [g for g in groups if any(same_cell(j) for j in g)]
        groups = [g for g in groups if g not in near] + [[k] + [j for g in near for j in g]]
    return groups


def _nearest_piece(
    ys: np.ndarray, xs: np.ndarray, pieces: np.ndarray, groups: list[list[int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Divide a region between groups of large nucleus pieces: each pixel goes to the nearest group."""
    y0, x0 = ys.min(), xs.min()
    shape = (ys.max() - y0 + 1, xs.max() - x0 + 1)
    best = np.full(len(ys), np.inf, np.float32)
    owner = np.zeros(len(ys), np.int32)
    for j, group in enumerate(groups):
        free = np.ones(shape, np.uint8)
        sel = np.isin(pieces, group)
        free[ys[sel] - y0, xs[sel] - x0] = 0
        d = cv2.distanceTransform(free, cv2.DIST_L2, 5)[ys - y0, xs - x0]
        closer = d < best
        best[closer], owner[closer] = d[closer], j
    return [(ys[owner == j], xs[owner == j]) for j in range(len(groups))]


def _split(
    ys: np.ndarray, xs: np.ndarray, rbc: float, rbc_area: float, params: DetectorParams
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A watershed on the region's distance transform, seeded by peaks at least a red cell apart."""
    y0, x0 = ys.min(), xs.min()
    sub = np.zeros((ys.max() - y0 + 3, xs.max() - x0 + 3), np.uint8)
    sub[ys - y0 + 1, xs - x0 + 1] = 1
    dist = cv2.distanceTransform(sub, cv2.DIST_L2, 5)
    dist = cv2.GaussianBlur(dist, (0, 0), max(1.0, 0.1 * rbc))
    k = max(3, round(0.9 * rbc)) | 1
    peaks = (
        (dist >= cv2.dilate(dist, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))))
        & (dist >= params.split_peak * rbc)
        & (sub > 0)
    )
    n, markers = cv2.connectedComponents(peaks.astype(np.uint8))
    if n <= 2:
        return [(ys, xs)]
    markers = markers.astype(np.int32)
    markers[(sub == 0)] = n  # the outside is its own basin
    relief = cv2.cvtColor(
        np.clip(255 - dist * (255 / max(dist.max(), 1e-6)), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR
    )
    cv2.watershed(relief, markers)
    out = []
    for m in range(1, n):
        yy, xx = np.nonzero((markers == m) & (sub > 0))
        out.append((yy + y0 - 1, xx + x0 - 1))
    if len(out) < 2 or min(len(p[0]) for p in out) < params.split_min_part * rbc_area:
        return [(ys, xs)]  # lobes of one cell, not two cells
    return out


def detect_white_cells(rgb: np.ndarray, params: DetectorParams = DEFAULT_PARAMS) -> list[CellBox]:
    """The white cells of a field, top to bottom: a :class:`CellBox` each, in original pixels."""
    return analyse_field(rgb, params).boxes

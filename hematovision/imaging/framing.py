"""Frame the white cell: find its nucleus and cut a square around it, at a fixed relative scale.

Why: laboratories frame cells differently. A Kaggle image is a 320x240 field in
which the white cell is a small disc somewhere (often near an edge); a PBC image
is a 360x363 crop with the cell in the middle; other labs send 120-px crops the
cell fills, or 300-px CellaVision crops. Resizing the whole image to the model's
input makes the same cell 60 px wide in one source and 150 px in another, and
throws away most of the Kaggle cell's detail. Framing the cell first gives the
network the cell at one scale, whatever the source.

How: the nucleus is the most blue-over-green thing on a Romanowsky-stained smear
(red cells are pink, backgrounds white to yellowish, eosinophil granules orange).
On a small copy of the image, ``B - G`` is thresholded (Otsu), nearby lobes are
merged (a neutrophil's nucleus is several blobs), and the largest blob's bounding
box, times :data:`CELL_SCALE`, is the square that is cut and resized (about 0.5 ms
for a 320x240 image on one core). Where no
nucleus stands out (a grey image, a blank field), the whole image is used, as a
``full`` framing would.

The framing a model was trained with is recorded in its card (``framing``) and
every path that feeds a network goes through :func:`model_input`, so training,
serving, Grad-CAM and adaptation cannot differ. It is the one preprocessing step
outside the Keras graph, because it needs connected components; everything after
it (resize, ``preprocess_input``, temperature) is inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .decode import resize_for_model

#: ``full``: the whole image, squashed to a square (models before framing existed);
#: ``cell``: a square around the nucleus located by ``B - G`` (Romanowsky stains);
#: ``cell_any_stain``: the same, and where ``B - G`` finds no nucleus (a brown or red nucleus on a
#: yellow ground, a greyscale camera, a strong hue shift) the densest stained object relative to
#: the image's own background (:func:`locate_cell_density`) instead of the whole image.
FRAMINGS = ("full", "cell", "cell_any_stain")

#: The square's side as a multiple of the nucleus bounding box's longer side: room for the
#: cytoplasm of a monocyte or neutrophil, which reaches about 1.5x beyond its nucleus.
CELL_SCALE = 2.0
#: Never frame less than this share of the image's longer side (guards against a platelet
#: or stain speck being taken for the nucleus).
MIN_SIDE_FRACTION = 0.25
#: The side (px) of the small copy the nucleus is searched on: a few milliseconds an image.
WORK_SIDE = 128
#: Bumped whenever the framing's pixels change (it keys the training feature caches).
FRAMING_REVISION = 2
#: A field whose strongest ``B - G`` (after blurring) is below this holds no stained nucleus.
MIN_CONTRAST = 25


@dataclass(frozen=True)
class CellBox:
    """Where the nucleus is, in the original image's pixels."""

    cx: float
    cy: float
    extent: float  # longer side of the nucleus bounding box


@dataclass(frozen=True)
class Jitter:
    """Training-time perturbation of the framing, so the model tolerates an imperfect box."""

    scale: float = 1.0  # multiplies the square's side
    dx: float = 0.0  # centre shift, as a share of the side
    dy: float = 0.0

    @classmethod
    def draw(cls, rng: np.random.Generator, scale: float = 0.15, shift: float = 0.06) -> Jitter:
        return cls(
            float(np.exp(rng.uniform(-scale, scale))),
            float(rng.uniform(-shift, shift)),
            float(rng.uniform(-shift, shift)),
        )


def locate_cell(rgb: np.ndarray) -> CellBox | None:
    """The nucleus's bounding box, or ``None`` where nothing blue-purple stands out."""
    h, w = rgb.shape[:2]
    s = WORK_SIDE / max(h, w)
    # Bilinear, not area, shrinking: 6x cheaper, and the blur below smooths what it aliases.
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
    score = cv2.GaussianBlur(cv2.subtract(small[..., 2], small[..., 1]), (0, 0), 1.0)  # B - G, saturating at 0
    if int(score.max()) < MIN_CONTRAST:
        return None
    _, mask = cv2.threshold(score, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _largest_blob(mask, s)


def _otsu3(values: np.ndarray, bins: int = 64) -> float:
    """The upper of the two thresholds that split ``values`` into three classes with the least
    within-class variance (multi-level Otsu): background, lightly stained, densely stained."""
    hist, edges = np.histogram(values, bins=bins)
    p = hist / max(1, hist.sum())
    c = (edges[:-1] + edges[1:]) / 2
    cp, cm = np.cumsum(p), np.cumsum(p * c)
    i, j = np.triu_indices(bins - 1, 1)
    w0, w1, w2 = cp[i], cp[j] - cp[i], 1 - cp[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = cm[i] ** 2 / w0 + (cm[j] - cm[i]) ** 2 / w1 + (cm[-1] - cm[j]) ** 2 / w2
    between[(w0 <= 1e-9) | (w1 <= 1e-9) | (w2 <= 1e-9)] = -1
    return float(c[j[int(np.argmax(between))]])


#: A field whose densest stain (summed optical density over the background, after blurring) is
#: below this holds no stained nucleus.
MIN_DENSITY = 0.6


def locate_cell_density(rgb: np.ndarray) -> CellBox | None:
    """The nucleus as the densest stained object, whatever the stain's hue.

    Optical density is taken per channel *relative to the image's own background* (the median
    of its brightest 15%), so a yellow, blue-green or grey ground all become neutral, and summed
    over channels: a nucleus absorbs more light than a red cell in any stain. The densest of three
    Otsu classes (background, light, dense) is the nucleus mask; black fill (a rotated field's
    corners) is left out. About 2 ms for a 320x240 image.
    """
    h, w = rgb.shape[:2]
    s = WORK_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR).astype(
        np.float32
    )
    lum = small.mean(axis=-1)
    lit = lum > 20
    if lit.sum() < 16:
        return None
    bg = np.median(small[lum >= np.percentile(lum[lit], 85)], axis=0)
    density = cv2.GaussianBlur(np.log((bg + 1.0) / (small + 1.0)).clip(0).sum(axis=-1) * lit, (0, 0), 1.0)
    if float(density.max()) < MIN_DENSITY:
        return None
    mask = ((density > _otsu3(density[lit])) & lit).astype(np.uint8) * 255
    return _largest_blob(mask, s)


def _largest_blob(mask: np.ndarray, s: float) -> CellBox | None:
    """The bounding box (original pixels) of the largest blob of ``mask`` after merging nearby lobes."""
    k = max(3, round(0.06 * WORK_SIDE)) | 1  # merges the lobes of one nucleus, not two cells
    merged = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels = cv2.connectedComponents(merged)
    if n <= 1:
        return None
    areas = np.bincount(labels[mask > 0], minlength=n)
    areas[0] = 0
    ys, xs = np.nonzero((labels == int(areas.argmax())) & (mask > 0))
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return CellBox(cx=(x0 + x1) / 2 / s, cy=(y0 + y1) / 2 / s, extent=max(x1 - x0, y1 - y0) / s)


def background_colour(rgb: np.ndarray) -> tuple[float, float, float]:
    """The median colour of the image's border, leaving out black fill (a rotated field's corners)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    lit = border[border.astype(np.int32).sum(axis=1) > 60]
    return tuple(float(v) for v in np.median(lit if len(lit) else border, axis=0))


def frame_cell(rgb: np.ndarray, size: int, jitter: Jitter | None = None, any_stain: bool = False) -> np.ndarray:
    """A ``size`` x ``size`` square around the cell; outside the image it is filled with the
    image's background colour (:func:`background_colour`), not mirrored cell parts.
    ``any_stain``: where ``B - G`` finds no nucleus, look for the densest stain instead."""
    box = locate_cell(rgb)
    if box is None and any_stain:
        box = locate_cell_density(rgb)
    if box is None:
        return resize_for_model(rgb, size)
    h, w = rgb.shape[:2]
    j = jitter or Jitter()
    side = min(max(CELL_SCALE * box.extent, MIN_SIDE_FRACTION * max(h, w)), max(h, w)) * j.scale
    x0 = box.cx + j.dx * side - side / 2
    y0 = box.cy + j.dy * side - side / 2
    sc = size / side
    fill = background_colour(rgb) if (x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h) else (0.0, 0.0, 0.0)
    # Work on the part of the image the square covers, with a margin for the smoothing kernel and
    # the bilinear taps, so the cost does not grow with the whole image.
    margin = 2 + (int(np.ceil(4 * 0.5 / sc)) if sc < 1 else 0)
    xa, ya = max(0, int(np.floor(x0)) - margin), max(0, int(np.floor(y0)) - margin)
    xb, yb = min(w, int(np.ceil(x0 + side)) + margin), min(h, int(np.ceil(y0 + side)) + margin)
    sub, x0, y0 = rgb[ya:yb, xa:xb], x0 - xa, y0 - ya
    if sc < 0.5:  # a large photograph: area-shrink the region first, so the blur below stays cheap
        f = 2 * sc
        sub = cv2.resize(
            sub, (max(1, round(sub.shape[1] * f)), max(1, round(sub.shape[0] * f))), interpolation=cv2.INTER_AREA
        )
        x0, y0, side = x0 * f, y0 * f, side * f
        sc = size / side
    if sc < 1 and 0.5 / sc > 0.6:  # shrinking: smooth first so the warp does not alias (area-like)
        sub = cv2.GaussianBlur(sub, (0, 0), 0.5 / sc)
    m = np.float32([[sc, 0, -x0 * sc], [0, sc, -y0 * sc]])
    return cv2.warpAffine(
        sub, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )


def model_input(rgb: np.ndarray, size: int, framing: str = "full", jitter: Jitter | None = None) -> np.ndarray:
    """The ``size`` x ``size`` RGB array a network with this ``framing`` expects."""
    if framing in ("cell", "cell_any_stain"):
        return frame_cell(rgb, size, jitter, any_stain=framing == "cell_any_stain")
    if framing == "full":
        return resize_for_model(rgb, size)
    raise ValueError(f"unknown framing {framing!r}; expected one of {FRAMINGS}")

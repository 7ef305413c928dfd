"""Generated smear fields with known white-cell boxes: for tests, benchmarks and the sample field.

Not a realistic renderer, only what the detector must cope with: a light background, many pink red
cells (pale centres, overlapping), platelets (small purple specks), and white cells made of pale
cytoplasm around a dark purple nucleus (round, or lobed like a neutrophil's), with blur and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BACKGROUND = (226, 222, 228)
RED_CELL = (214, 150, 158)
CYTOPLASM = (206, 190, 222)
NUCLEUS = (104, 58, 160)
PLATELET = (140, 90, 180)


@dataclass(frozen=True)
class WhiteCell:
    """A white cell to draw: centre, cell radius (px) and nucleus shape."""

    x: float
    y: float
    radius: float
    lobes: int = 1  # 1: a round nucleus (lymphocyte-like); 2-5: a segmented one

    def box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """The whole cell's box, clipped to the image."""
        r = self.radius
        return (
            max(0, int(self.x - r)),
            max(0, int(self.y - r)),
            min(w, int(np.ceil(self.x + r))),
            min(h, int(np.ceil(self.y + r))),
        )


def make_field(
    width: int = 640,
    height: int = 480,
    cells: tuple[WhiteCell, ...] = (),
    rbc_radius: float = 45.0,
    rbc_cover: float = 0.45,
    platelets: int = 6,
    seed: int = 0,
) -> np.ndarray:
    """An RGB ``uint8`` field with red cells covering about ``rbc_cover`` of it, and the given white cells."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = BACKGROUND
    n_rbc = int(rbc_cover * width * height / (np.pi * rbc_radius**2))
    for _ in range(n_rbc):
        x, y = (
            rng.uniform(-rbc_radius / 2, width + rbc_radius / 2),
            rng.uniform(-rbc_radius / 2, height + rbc_radius / 2),
        )
        if any((x - c.x) ** 2 + (y - c.y) ** 2 < (c.radius + 0.6 * rbc_radius) ** 2 for c in cells):
            continue  # keep white cells visible
        r = rbc_radius * rng.uniform(0.88, 1.12)
        cv2.circle(img, (round(x), round(y)), round(r), RED_CELL, -1, cv2.LINE_AA)
        pale = tuple(0.5 * a + 0.5 * b for a, b in zip(RED_CELL, BACKGROUND))
        cv2.circle(img, (round(x), round(y)), round(0.4 * r), pale, -1, cv2.LINE_AA)
    for _ in range(platelets):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        cv2.circle(img, (round(x), round(y)), max(2, round(0.12 * rbc_radius)), PLATELET, -1, cv2.LINE_AA)
    for c in cells:
        cv2.circle(img, (round(c.x), round(c.y)), round(c.radius), CYTOPLASM, -1, cv2.LINE_AA)
    for c in cells:
        if c.lobes <= 1:
            cv2.circle(img, (round(c.x), round(c.y)), round(0.72 * c.radius), NUCLEUS, -1, cv2.LINE_AA)
            continue
        turn = rng.uniform(0, 2 * np.pi)
        for k in range(c.lobes):
            a = turn + 2 * np.pi * k / c.lobes
            lx, ly = c.x + 0.42 * c.radius * np.cos(a), c.y + 0.42 * c.radius * np.sin(a)
            cv2.circle(img, (round(lx), round(ly)), round(0.3 * c.radius), NUCLEUS, -1, cv2.LINE_AA)
            nx, ny = (
                c.x + 0.42 * c.radius * np.cos(a + 2 * np.pi / c.lobes),
                c.y + 0.42 * c.radius * np.sin(a + 2 * np.pi / c.lobes),
            )
            if k < c.lobes - 1:  # chromatin strands join neighbouring lobes
                cv2.line(
                    img,
                    (round(lx), round(ly)),
                    (round(nx), round(ny)),
                    NUCLEUS,
                    max(2, round(0.08 * c.radius)),
                    cv2.LINE_AA,
                )
    img = cv2.GaussianBlur(img, (0, 0), max(0.8, rbc_radius / 40))
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)

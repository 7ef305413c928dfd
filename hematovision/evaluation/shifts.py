"""Simulated laboratory shifts: how another lab's images differ, applied to our own labeled test images.

We cannot see other laboratories' images, but we know how they differ: the crop
(a 120-px crop the cell fills, or a wide field in which it is small), the stain
and lamp (a yellowish or bluish cast), the camera (blur, JPEG). Each function
below turns a PBC test image (a 360x363 crop with the cell in the middle) into
one such image, deterministically, so a model's accuracy under each shift can
be measured on labels we trust (``scripts/shift_check.py``). This is a stress
test, not a substitute for real images from other labs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..imaging.framing import background_colour


def tight_crop(rgb: np.ndarray, side: int = 120, fraction: float = 0.55) -> np.ndarray:
    """A ``side``-px square of the image's centre ``fraction``: the cell fills the crop."""
    h, w = rgb.shape[:2]
    s = int(min(h, w) * fraction)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(rgb[y:y + s, x:x + s], (side, side), interpolation=cv2.INTER_AREA)


def small_in_field(
    rgb: np.ndarray, field: tuple[int, int] = (320, 240), scale: float = 0.4, offset: tuple[float, float] = (0.7, 0.35)
) -> np.ndarray:
    """The image shrunk by ``scale`` and placed off-centre in a ``field`` (w, h) of its background colour."""
    w, h = field
    small = cv2.resize(
        rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))), interpolation=cv2.INTER_AREA
    )
    out = np.empty((h, w, 3), np.uint8)
    out[:] = np.array(background_colour(rgb), np.float64).round().astype(np.uint8)
    sh, sw = min(h, small.shape[0]), min(w, small.shape[1])
    y = int((h - sh) * offset[1])
    x = int((w - sw) * offset[0])
    out[y:y + sh, x:x + sw] = small[:sh, :sw]
    return out


def colour_cast(rgb: np.ndarray, gains: tuple[float, float, float] = (1.04, 1.0, 0.82)) -> np.ndarray:
    """Per-channel gains (R, G, B); the default is a yellowish lamp or a rapid stain's warm cast."""
    return np.clip(rgb.astype(np.float32) * np.array(gains, np.float32), 0, 255).astype(np.uint8)


def blur_jpeg(rgb: np.ndarray, sigma: float = 1.2, quality: int = 50) -> np.ndarray:
    """A softer, more compressed camera."""
    soft = cv2.GaussianBlur(rgb, (0, 0), sigma)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(soft, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Shift:
    name: str
    describe: str
    apply: Callable[[np.ndarray], np.ndarray]


SHIFTS: tuple[Shift, ...] = (
    Shift("none", "the PBC test image as it is (360x363, cell centred)", lambda x: x),
    Shift("tight_120", "120-px crop of the centre 55%: the cell fills the image", tight_crop),
    Shift("small_in_field", "shrunk to 40% and placed off-centre in a 320x240 field", small_in_field),
    Shift("yellow_cast", "R x1.04, B x0.82: a warm lamp or rapid stain", colour_cast),
    Shift(
        "tight_120_yellow",
        "both of the above: the first other laboratory of issue #8",
        lambda x: colour_cast(tight_crop(x)),
    ),
    Shift("blur_jpeg", "Gaussian blur (sigma 1.2) and JPEG quality 50", blur_jpeg),
)

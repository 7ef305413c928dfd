"""Recoloured copies of smear fields, to test that white-cell detection does not depend on one stain.

Laboratories differ in stain (May-Grünwald-Giemsa, Wright, Leishman; fresh or aged), in lamp colour and
in camera white balance. These transforms make copies of a field that look like another laboratory's:
the cells stay where they are (so annotated boxes still hold), only the colours change. They are used by
``scripts/field_check.py`` and the tests, never by the detector itself.
"""

from __future__ import annotations

import cv2
import numpy as np

#: name -> what the copy looks like
RECOLOURS = {
    "hue_rotated": "every hue turned by 60 degrees (purple nuclei become blue-green, pink red cells orange)",
    "yellow_brown": "yellowish background, tan red cells, reddish-brown nuclei "
    "(an aged or Leishman-like stain under a warm lamp)",
    "blue_green": "blue-green cast over the whole field (a cool lamp or unbalanced camera)",
    "dim_pale": "under-exposed and washed out: darker, half the saturation",
}


def _hue_shift(rgb: np.ndarray, degrees: float) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)  # hue 0..255 for 0..360 degrees
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _purple_to_red(rgb: np.ndarray) -> np.ndarray:
    """Turn blue-purple hues (about 205-345 degrees) towards red, leaving pinks and greys nearly as they are."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    h = hsv[..., 0].astype(np.float32) * (360 / 256)
    bump = np.clip(1 - np.abs(h - 275) / 70, 0, 1)
    hsv[..., 0] = (np.round((h + 85 * bump) * (256 / 360)) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _gains(rgb: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * np.float32(gains), 0, 255).astype(np.uint8)


def recolour(rgb: np.ndarray, name: str) -> np.ndarray:
    """A copy of ``rgb`` (uint8 RGB) in the named colouring (:data:`RECOLOURS`)."""
    if name == "hue_rotated":
        return _hue_shift(rgb, 60)
    if name == "yellow_brown":
        return _gains(_purple_to_red(rgb), (1.0, 0.92, 0.58))
    if name == "blue_green":
        return _gains(rgb, (0.72, 0.98, 0.92))
    if name == "dim_pale":
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] *= 0.5
        hsv[..., 2] *= 0.7
        return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    raise ValueError(f"unknown recolouring {name!r}; expected one of {sorted(RECOLOURS)}")

"""Training-time augmentation for blood smears, on RGB ``uint8`` arrays.

A cell has no "up": any rotation or flip is a valid copy. Between laboratories
what changes is the stain (hue and intensity of haematoxylin/eosin-like dyes),
the camera (white balance, blur, JPEG quality) and the scale (how much of the
crop the cell fills). Each transform here imitates one of those, and every one
takes an explicit ``numpy.random.Generator`` so a seed reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Ruifrok & Johnston stain vectors (as in scikit-image's rgb2hed).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class AugmentConfig:
    """How strong each transform is; ``0`` / ``(1, 1)`` switches one off."""

    rotate: bool = True  # any angle, plus flips
    zoom: tuple[float, float] = (0.8, 1.25)  # >1 enlarges the cell
    shift: float = 0.06  # fraction of the side
    hed_scale: float = 0.10  # per-stain multiplicative jitter
    hed_shift: float = 0.03  # per-stain additive jitter (optical density)
    brightness: float = 0.10
    contrast: float = 0.15
    saturation: float = 0.20
    hue: float = 6.0  # degrees on OpenCV's 0..180 scale / 2
    blur_prob: float = 0.25
    jpeg_prob: float = 0.25
    border: str = "reflect"  # or "black", as in fields already rotated with black corners
    stain_angle: float = 0.0  # degrees: each stain's colour vector turned by up to this (stain-vector randomisation)
    cast: float = 0.0  # per-channel gains in [1 - cast, 1 + cast]: a lamp's or a ground's colour cast
    gamma: float = 0.0  # gamma in [1 / (1 + gamma), 1 + gamma], log-uniform
    grey_prob: float = 0.0  # share of views turned to greyscale (a monochrome camera; no hue to lean on)

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(False, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "reflect", 0.0, 0.0, 0.0, 0.0)


def geometric(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Rotation by any angle, flip, zoom and shift in one affine warp (reflected borders)."""
    h, w = rgb.shape[:2]
    angle = float(rng.uniform(0, 360)) if cfg.rotate else 0.0
    lo, hi = cfg.zoom
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += rng.uniform(-cfg.shift, cfg.shift, size=2) * (w, h)
    out = cv2.warpAffine(
        rgb,
        m,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT if cfg.border == "black" else cv2.BORDER_REFLECT_101,
    )
    if cfg.rotate and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    """Perturb the image in optical-density stain space (HED), as between staining runs."""
    if scale == 0 and shift == 0:
        return rgb
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB.astype(np.float32)
    alpha = rng.uniform(1 - scale, 1 + scale, size=3).astype(np.float32)
    beta = rng.uniform(-shift, shift, size=3).astype(np.float32)
    od2 = (hed * alpha + beta) @ _RGB_FROM_HED.astype(np.float32)
    out = 256.0 * np.exp(-od2) - 1.0
    return np.clip(out, 0, 255).reshape(rgb.shape).astype(np.uint8)


def _turn(vector: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """``vector`` (a unit stain colour in optical density) turned by ``degrees`` about a random axis,
    kept in the positive octant (a dye absorbs, it never emits)."""
    axis = rng.normal(size=3)
    axis -= axis @ vector * vector
    axis /= np.linalg.norm(axis) + 1e-12
    t = np.deg2rad(degrees)
    out = np.clip(np.cos(t) * vector + np.sin(t) * axis, 0.02, None)
    return out / np.linalg.norm(out)


def stain_vectors(rgb: np.ndarray, rgb_from_hed: np.ndarray) -> np.ndarray:
    """Re-stain: the image's haematoxylin, eosin and residual densities recomposed with other stain
    colour vectors (rows of ``rgb_from_hed``), as another laboratory's dyes would show the same cell."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB.astype(np.float32)
    out = 256.0 * np.exp(-(np.clip(hed, 0, None) @ rgb_from_hed.astype(np.float32))) - 1.0
    return np.clip(out, 0, 255).reshape(rgb.shape).astype(np.uint8)


def random_stain(rgb: np.ndarray, rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """Stain-vector randomisation: each of the three stain colours turned by up to ``max_degrees``."""
    if max_degrees <= 0:
        return rgb
    ref = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
    turned = np.stack([_turn(v, float(rng.uniform(0, max_degrees)), rng) for v in ref])
    return stain_vectors(rgb, turned)


def light_and_camera(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A colour cast (per-channel gains), a gamma, and sometimes a monochrome camera."""
    out = rgb
    if cfg.cast or cfg.gamma:
        f = out.astype(np.float32) / 255.0
        if cfg.cast:
            f = f * rng.uniform(1 - cfg.cast, 1 + cfg.cast, size=3).astype(np.float32)
        if cfg.gamma:
            f = np.clip(f, 0, 1) ** float(np.exp(rng.uniform(-np.log1p(cfg.gamma), np.log1p(cfg.gamma))))
        out = np.clip(f * 255.0, 0, 255).astype(np.uint8)
    if cfg.grey_prob and rng.random() < cfg.grey_prob:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    return out


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Camera-like changes: brightness, contrast, saturation and hue."""
    out = rgb
    if cfg.saturation or cfg.hue:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue, cfg.hue)) % 180
        hsv[..., 1] *= rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        out = cv2.cvtColor(np.clip(hsv, 0, [180, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB)
    if cfg.brightness or cfg.contrast:
        f = out.astype(np.float32)
        mean = f.mean()
        f = (f - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
        f *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        out = np.clip(f, 0, 255).astype(np.uint8)
    return out


def camera_noise(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Slight defocus and JPEG re-compression, as from other microscopes and scanners."""
    out = rgb
    if rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(0.3, 1.2)) * max(out.shape[:2]) / 224.0
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if rng.random() < cfg.jpeg_prob:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 90))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)


def augment(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """One random training view of ``rgb`` (same shape and dtype)."""
    out = geometric(rgb, rng, cfg)
    out = stain_jitter(out, rng, cfg.hed_scale, cfg.hed_shift)
    if cfg.stain_angle:  # only recipes that ask for it draw from rng here, so older recipes keep their views
        out = random_stain(out, rng, cfg.stain_angle)
    out = colour_jitter(out, rng, cfg)
    if cfg.cast or cfg.gamma or cfg.grey_prob:
        out = light_and_camera(out, rng, cfg)
    return camera_noise(out, rng, cfg)

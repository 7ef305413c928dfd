"""Decode and validate user images: bytes in, RGB ``uint8`` array out, or a plain reason.

This is the one input path shared by training, the CLI and the dashboard, so a
file that decodes for one decodes the same way for all. Formats are identified
by content (magic bytes), never by the file name.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

# Let our own pixel limit speak first, with a clearer message than Pillow's.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An input that cannot be classified; ``str(err)`` is a reason a lab user can read."""


@dataclass(frozen=True)
class ImageLimits:
    """Sizes outside which an input is refused before any expensive work."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 32


DEFAULT_LIMITS = ImageLimits()

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")


def sniff_format(data: bytes) -> str | None:
    """The image format named by the leading bytes, or ``None`` for anything else."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image and what was noticed while decoding it."""

    rgb: np.ndarray  # H x W x 3, uint8
    format: str
    note: str = ""


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode (palette, alpha, 16-bit, CMYK, grey) to RGB uint8."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode image bytes to RGB, refusing what cannot hold a cell or could exhaust memory.

    Raises :class:`ImageError` with a plain reason; never anything else for bad bytes.
    """
    if not data:
        raise ImageError("empty file")
    if len(data) > limits.max_bytes:
        raise ImageError(f"file too large ({len(data) / 1e6:.1f} MB; limit {limits.max_bytes / 1e6:.0f} MB)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("not a supported image (JPEG, PNG, BMP or TIFF, identified by content)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # header only: nothing decoded yet
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"image too large ({width}x{height} = {width * height / 1e6:.0f} MP; "
                    f"limit {limits.max_pixels / 1e6:.0f} MP)"
                )
            if min(width, height) < limits.min_side:
                raise ImageError(f"image too small to hold a cell ({width}x{height}; minimum {limits.min_side} px a side)")
            note = ""
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                img.seek(0)
                note = f"multi-page {fmt}: first of {frames} pages used"
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageError(f"corrupt or truncated {fmt} ({type(exc).__name__})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < limits.min_side:
        raise ImageError("could not be decoded to an RGB image")
    return DecodedImage(np.ascontiguousarray(rgb), fmt, note)


def read_rgb(path) -> np.ndarray:
    """Fast path for trusted dataset files (training): OpenCV decode, RGB order."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_for_model(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to the model's square input (area interpolation when shrinking).

    The model resizes internally too, so this is only to batch images of
    different sizes; training and serving both call this one function.
    """
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def thumbnail(rgb: np.ndarray, side: int = 96) -> np.ndarray:
    """A small copy for tables, keeping the aspect ratio."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)

"""Decode and validate user images: bytes in, RGB ``uint8`` array out, or a plain reason.

This is the one input path for user images, shared by the CLI, the dashboard
and evaluation, so a file that decodes for one decodes the same way for all.
(Training reads its trusted dataset files with the faster :func:`read_rgb`.)
Formats are identified by content (magic bytes), never by the file name.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from .limits import DEFAULT_LIMITS, ImageLimits, too_large_reason

# Let our own pixel limit speak first, with a clearer message than Pillow's.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An input that cannot be classified; ``str(err)`` is a reason a lab user can read."""


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


_GREY_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS", "I", "I;32", "F")


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode (palette, alpha, 16-bit, CMYK, grey) to RGB uint8.

    Transparent pixels are composited on white (the background of a smear);
    16-bit grey is scaled from its full range, 32-bit/float grey from its own.
    """
    mode = img.mode
    if mode in _GREY_HIGH_DEPTH or mode.startswith("I;16"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if arr.ndim != 2:
            raise ImageError(f"unsupported colour mode ({mode})")
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
        arr = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX", "HSV"):
        return np.asarray(img.convert("RGB"))
    raise ImageError(f"unsupported colour mode ({mode})")


def _fast_jpeg(data: bytes, img: Image.Image) -> np.ndarray | None:
    """The common case, a plain 8-bit colour JPEG with no EXIF rotation, decoded by OpenCV.

    Same libjpeg-turbo decode as Pillow's (and as training's :func:`read_rgb`), at about a
    third of the cost, because it skips Pillow's mode conversion and copies. ``None`` means
    "not the common case, or OpenCV disagrees with the header": the caller then takes the
    careful Pillow path, which also words any error.
    """
    if img.format != "JPEG" or img.mode != "RGB":
        return None
    try:
        if img.getexif().get(0x0112, 1) not in (1, None):  # EXIF orientation: Pillow's exif_transpose handles it
            return None
    except Exception:
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[:2] != (img.size[1], img.size[0]):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image too large ({width}x{height} = {width * height / 1e6:.0f} MP; "
            f"limit {limits.max_pixels / 1e6:g} MP)"
        )
    if min(width, height) < limits.min_side:
        raise ImageError(f"image too small to hold a cell ({width}x{height}; minimum {limits.min_side} px a side)")


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode image bytes to RGB, refusing what cannot hold a cell or could exhaust memory.

    The order matters: size in bytes, then the format from the magic bytes,
    then the dimensions from the header (``Image.open`` parses the header only;
    no pixel memory exists yet), and only then the pixels. Raises
    :class:`ImageError` with a plain reason; never anything else for bad bytes.
    """
    if not data:
        raise ImageError("empty file")
    if len(data) > limits.max_bytes:
        raise ImageError(too_large_reason(len(data), limits.max_bytes))
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("not a supported image (JPEG, PNG, BMP or TIFF, identified by content)")
    note = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # formats=[fmt]: only the plugin the magic bytes named may parse these bytes.
            img = Image.open(io.BytesIO(bytes(data)), formats=[fmt])
            width, height = img.size  # header only: nothing decoded yet
            _check_size(width, height, limits)
            if getattr(img, "is_animated", False):
                frames = img.n_frames
                img.seek(0)
                _check_size(*img.size, limits)
                note = f"multi-page {fmt}: first of {frames} pages used"
            fast = _fast_jpeg(data, img)
            if fast is not None:
                return DecodedImage(fast, fmt, note)
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a damaged EXIF block must not cost the pixels
                note = "; ".join(x for x in (note, "EXIF orientation unreadable, image used as stored") if x)
            rgb = _to_rgb8(img)
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, struct.error, ...)
        raise ImageError(f"corrupt or truncated {fmt} ({type(exc).__name__})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError("could not be decoded to an RGB image")
    _check_size(rgb.shape[1], rgb.shape[0], limits)
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

"""How big an input may be before it is refused, and the wording of that refusal.

Checked before any expensive work (reading a whole file, decoding pixels, opening a zip member).
The defaults can be changed with environment variables, read once at import; see
``docs/input-limits.md``. Archive limits (members, total size) are :class:`~.sources.ArchiveLimits`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """An integer setting from the environment; an unusable value falls back to the default with a warning."""
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        warnings.warn(f"{name}={raw!r} is not a whole number; using the default {default}", stacklevel=2)
        return default
    if value < minimum:
        warnings.warn(f"{name}={value} is below {minimum}; using the default {default}", stacklevel=2)
        return default
    return value


@dataclass(frozen=True)
class ImageLimits:
    """Sizes outside which an input is refused before any expensive work.

    The defaults can be changed with environment variables (read once, at
    import): ``HEMATOVISION_MAX_BYTES``, ``HEMATOVISION_MAX_PIXELS`` and
    ``HEMATOVISION_MIN_SIDE``; see ``docs/input-limits.md``.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 32

    @classmethod
    def from_env(cls) -> ImageLimits:
        d = cls()
        return cls(
            max_bytes=env_int("HEMATOVISION_MAX_BYTES", d.max_bytes, 1),
            max_pixels=env_int("HEMATOVISION_MAX_PIXELS", d.max_pixels, 1),
            min_side=env_int("HEMATOVISION_MIN_SIDE", d.min_side, 1),
        )


DEFAULT_LIMITS = ImageLimits.from_env()


def human_bytes(n: int | float) -> str:
    """``52.4 MB``, ``1.5 kB``, ``12 bytes``: sizes in reasons a person reads."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{int(n)} bytes"


def too_large_reason(size: int | float, limit: int | float) -> str:
    """The one wording for a file over the size limit (used for files, uploads and zip members)."""
    return f"file too large ({human_bytes(size)}; limit {human_bytes(limit)})"

"""Where the labeled images sit under the data root, and how a folder names its class.

Shared by :mod:`.datasets` (the split) and :mod:`.fields` (the Kaggle field table):
both walk the same class folders, so the walk lives here, below both of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..config import TRAINING_CLASSES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
KAGGLE_DIR = Path("blood-cells/dataset2-master/images")
PBC_DIR = Path("pbc")


def normalise_label(name: str, classes: Iterable[str] = TRAINING_CLASSES) -> str | None:
    """Map a folder or CSV label to a class name, case-insensitive; ``None`` if unknown."""
    key = name.strip().lower()
    for cls in classes:
        if key == cls or (key.endswith("s") and key[:-1] == cls):
            return cls
    return None


def iter_class_folders(root: Path) -> Iterable[tuple[str | None, str, Path]]:
    """Yield ``(class or None, folder name, file)`` for image files under ``root/<class>/``."""
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        label = normalise_label(folder.name)
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                yield label, folder.name, f

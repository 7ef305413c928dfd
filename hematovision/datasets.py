"""Labeled datasets and the recorded train/validation/test split.

Split rules (also written into the model card and the manifest):

* **Kaggle blood-cells** (``blood-cells/dataset2-master/images``): ``TEST`` and
  ``TEST_SIMPLE`` are test only. ``TRAIN`` holds ~36 augmented copies of each of
  277 original cells; file ``_N_XXXX.jpeg`` is a copy of cell ``N`` of its class.
  Validation takes whole cells, so no copy of one cell straddles train and
  validation: a cell goes to validation when the first 8 hex digits of
  ``sha256("<class>/<N>")`` read as a fraction fall below ``KAGGLE_VAL_FRACTION``.
* **PBC** (``pbc/<class>/*.jpg``): files are de-duplicated by content sha256 (the
  first path in sorted order is kept); each unique image goes to train,
  validation or test by the fraction read from the first 8 hex digits of its
  content hash: ``< 0.70`` train, ``< 0.85`` validation, else test.

Both rules are pure functions of names and bytes, so anyone can re-derive the
split; :func:`write_manifest` records every file with its hash and split.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .config import TRAINING_CLASSES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
KAGGLE_DIR = Path("blood-cells/dataset2-master/images")
PBC_DIR = Path("pbc")
KAGGLE_VAL_FRACTION = 0.20
PBC_TRAIN_FRACTION = 0.70
PBC_VAL_FRACTION = 0.15

#: Test sets reported in evaluation.json, by key.
TEST_SETS = {
    "kaggle_test": "Kaggle TEST",
    "kaggle_test_simple": "Kaggle TEST_SIMPLE",
    "pbc_test": "PBC test",
}

_KAGGLE_CELL = re.compile(r"^_(\d+)_\d+\.")


@dataclass(frozen=True)
class LabeledImage:
    """One labeled file. ``group`` names the original cell (copies share it)."""

    path: Path  # absolute
    relpath: str  # relative to the data root, forward slashes
    label: str
    source: str  # "kaggle" or "pbc" (or "user" for uploaded sets)
    split: str  # "train", "val", "test", "test_simple"
    group: str
    sha256: str = ""


def _fraction(hex_digest: str) -> float:
    return int(hex_digest[:8], 16) / 0x1_0000_0000


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def kaggle_cell(path: Path) -> str:
    m = _KAGGLE_CELL.match(path.name)
    if not m:
        raise ValueError(f"Kaggle file name without a cell number: {path.name}")
    return m.group(1)


def kaggle_images(root: Path) -> list[LabeledImage]:
    """Kaggle TRAIN (split into train/val by cell), TEST and TEST_SIMPLE."""
    base = Path(root) / KAGGLE_DIR
    out: list[LabeledImage] = []
    for folder, split_name in (("TRAIN", None), ("TEST", "test"), ("TEST_SIMPLE", "test_simple")):
        d = base / folder
        if not d.is_dir():
            continue
        for label, _, f in iter_class_folders(d):
            if label is None:
                continue
            cell = kaggle_cell(f)
            group = f"kaggle/{folder}/{label}/{cell}"
            split = split_name
            if split is None:
                digest = hashlib.sha256(f"{label}/{cell}".encode()).hexdigest()
                split = "val" if _fraction(digest) < KAGGLE_VAL_FRACTION else "train"
            out.append(LabeledImage(f, f.relative_to(root).as_posix(), label, "kaggle", split, group))
    return out


def pbc_images(root: Path) -> list[LabeledImage]:
    """PBC, de-duplicated by content hash, split by that hash."""
    base = Path(root) / PBC_DIR
    if not base.is_dir():
        return []
    out: list[LabeledImage] = []
    seen: set[str] = set()
    for label, _, f in iter_class_folders(base):
        if label is None:
            continue
        digest = sha256_file(f)
        if digest in seen:
            continue
        seen.add(digest)
        frac = _fraction(digest)
        split = "train" if frac < PBC_TRAIN_FRACTION else "val" if frac < PBC_TRAIN_FRACTION + PBC_VAL_FRACTION else "test"
        out.append(LabeledImage(f, f.relative_to(root).as_posix(), label, "pbc", split, f"pbc/{digest[:16]}", digest))
    return out


def discover(root: Path) -> list[LabeledImage]:
    """Every labeled image of both sources under the data root, with its split."""
    return kaggle_images(root) + pbc_images(root)


def select(images: Iterable[LabeledImage], *, source: str | None = None, split: str | None = None) -> list[LabeledImage]:
    return [i for i in images if (source is None or i.source == source) and (split is None or i.split == split)]


def test_set(images: Iterable[LabeledImage], key: str) -> list[LabeledImage]:
    """The images of one named test set (see :data:`TEST_SETS`)."""
    source, split = {"kaggle_test": ("kaggle", "test"), "kaggle_test_simple": ("kaggle", "test_simple"), "pbc_test": ("pbc", "test")}[key]
    return select(images, source=source, split=split)


def split_counts(images: Iterable[LabeledImage]) -> dict[str, dict[str, dict[str, int]]]:
    """``{source: {split: {class: count}}}`` for the model card."""
    counts: dict[str, dict[str, Counter]] = {}
    for i in images:
        counts.setdefault(i.source, {}).setdefault(i.split, Counter())[i.label] += 1
    return {s: {sp: dict(sorted(c.items())) for sp, c in d.items()} for s, d in counts.items()}


def write_manifest(images: Iterable[LabeledImage], path: Path) -> None:
    """One row per file: where it is, its class, source, split, cell group and content hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["relpath", "label", "source", "split", "group", "sha256"])
        for i in images:
            w.writerow([i.relpath, i.label, i.source, i.split, i.group, i.sha256 or sha256_file(i.path)])


def read_manifest(path: Path, root: Path) -> list[LabeledImage]:
    with open(path, newline="") as fh:
        return [
            LabeledImage(Path(root) / r["relpath"], r["relpath"], r["label"], r["source"], r["split"], r["group"], r["sha256"])
            for r in csv.DictReader(fh)
        ]

"""Labeled datasets and the recorded train/validation/test split.

The split rules are :data:`SPLIT_RULES` below, written from the constants that apply them
into every model card (``training.split_rules``). In short: Kaggle ``TEST`` and ``TEST_SIMPLE``
are test only and ``TRAIN`` is split into train and validation by whole smear field; PBC is
de-duplicated by content and split by content hash.

Both rules are pure functions of names and bytes, so anyone can re-derive the
split; :func:`write_manifest` records every file with its hash and split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from .fields import read_table
from .layout import KAGGLE_DIR, PBC_DIR, iter_class_folders

KAGGLE_VAL_FRACTION = 0.20
PBC_TRAIN_FRACTION = 0.70
PBC_VAL_FRACTION = 0.15

#: The split rules in words, for the model card (``training.split_rules``); the numbers are the constants above.
SPLIT_RULES = f"""\
* **Kaggle blood-cells** (``{KAGGLE_DIR.as_posix()}``): ``TEST`` and
  ``TEST_SIMPLE`` are test only. ``TRAIN`` holds ~36 augmented copies (rotations,
  flips, shifts) of each original cell in its smear field. The ``N`` of a file
  name ``_N_XXXX.jpeg`` does *not* name that cell (each ``N`` holds copies of many
  fields), so copies are grouped by the field they show, found by image matching
  (:mod:`hematovision.data.fields`, committed as ``kaggle_fields.csv``). Validation takes
  whole fields, stratified by class: within each class the fields are ranked by
  ``sha256("<class>/<field>")`` and the first ``round({KAGGLE_VAL_FRACTION:.2f} * n)``
  (at least one) go to validation. A file missing from the field table (another
  copy of the data set) falls back to a group of its own ``N``, with a warning.
* **PBC** (``{PBC_DIR.as_posix()}/<class>/*.jpg``): files are de-duplicated by content sha256 (the
  first path in sorted order is kept); each unique image goes to train,
  validation or test by the fraction read from the first 8 hex digits of its
  content hash: ``< {PBC_TRAIN_FRACTION:.2f}`` train, ``< {PBC_TRAIN_FRACTION + PBC_VAL_FRACTION:.2f}``
  validation, else test."""

#: Test sets reported in evaluation.json, by key.
TEST_SETS = {
    "kaggle_test": "Kaggle TEST",
    "kaggle_test_simple": "Kaggle TEST_SIMPLE",
    "pbc_test": "PBC test",
}

log = logging.getLogger("hematovision.datasets")

_KAGGLE_CELL = re.compile(r"^_(\d+)_\d+\.")


@dataclass(frozen=True)
class LabeledImage:
    """One labeled file. ``group`` names the original cell (its copies share it)."""

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


def kaggle_cell(path: Path) -> str:
    m = _KAGGLE_CELL.match(path.name)
    if not m:
        raise ValueError(f"Kaggle file name without a cell number: {path.name}")
    return m.group(1)


def kaggle_images(root: Path, field_table: dict[str, str] | None = None) -> list[LabeledImage]:
    """Kaggle TRAIN (split into train/val by smear field), TEST and TEST_SIMPLE.

    ``group`` is ``kaggle/<FOLDER>/<class>/<field>``: the field's name is its first copy's
    file stem (see :mod:`hematovision.data.fields`). ``field_table`` (``relpath -> field``)
    defaults to the committed table.
    """
    table = read_table() if field_table is None else field_table
    base = Path(root) / KAGGLE_DIR
    out: list[LabeledImage] = []
    missing = 0
    for folder, split_name in (("TRAIN", None), ("TEST", "test"), ("TEST_SIMPLE", "test_simple")):
        d = base / folder
        if not d.is_dir():
            continue
        for label, _, f in iter_class_folders(d):
            if label is None:
                continue
            rel = f.relative_to(root).as_posix()
            field = table.get(rel)
            if field is None:
                missing += 1
                field = f"_{kaggle_cell(f)}_"
            out.append(LabeledImage(f, rel, label, "kaggle", split_name or "train", f"kaggle/{folder}/{label}/{field}"))
    if missing:
        log.warning(
            "%d Kaggle files are not in the field table: grouped by the N of their names, "
            "which can put copies of one cell on both sides of the split (python -m hematovision fields)",
            missing,
        )
    return _validation_fields(out)


def _validation_fields(images: list[LabeledImage]) -> list[LabeledImage]:
    """Move whole TRAIN fields to validation: per class, the ``round(KAGGLE_VAL_FRACTION * n)``
    fields (at least one) with the smallest ``sha256("<class>/<field>")``."""
    by_class: dict[str, set[str]] = {}
    for i in images:
        if i.split == "train":
            by_class.setdefault(i.label, set()).add(i.group)
    val: set[str] = set()
    for label, groups in by_class.items():
        ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{label}/{g.rsplit('/', 1)[1]}".encode()).hexdigest())
        val.update(ranked[:max(1, round(KAGGLE_VAL_FRACTION * len(ranked)))] if len(ranked) > 1 else [])
    return [replace(i, split="val") if i.group in val else i for i in images]


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
        split = (
            "train" if frac < PBC_TRAIN_FRACTION else "val" if frac < PBC_TRAIN_FRACTION + PBC_VAL_FRACTION else "test"
        )
        out.append(LabeledImage(f, f.relative_to(root).as_posix(), label, "pbc", split, f"pbc/{digest[:16]}", digest))
    return out


def discover(root: Path) -> list[LabeledImage]:
    """Every labeled image of both sources under the data root, with its split."""
    return kaggle_images(root) + pbc_images(root)


def select(
    images: Iterable[LabeledImage], *, source: str | None = None, split: str | None = None
) -> list[LabeledImage]:
    return [i for i in images if (source is None or i.source == source) and (split is None or i.split == split)]


def test_set(images: Iterable[LabeledImage], key: str) -> list[LabeledImage]:
    """The images of one named test set (see :data:`TEST_SETS`)."""
    source, split = {
        "kaggle_test": ("kaggle", "test"),
        "kaggle_test_simple": ("kaggle", "test_simple"),
        "pbc_test": ("pbc", "test"),
    }[key]
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
            LabeledImage(
                Path(root) / r["relpath"], r["relpath"], r["label"], r["source"], r["split"], r["group"], r["sha256"]
            )
            for r in csv.DictReader(fh)
        ]

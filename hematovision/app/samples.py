"""Sample images for the dashboard: held-out test files named in ``sample_data/manifest.csv``.

The images themselves stay in the data root (they are not ours to redistribute);
the manifest only lists where they are, so the repository stays small.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..config import REPO_ROOT, TRAINING_CLASSES, data_root
from ..data.datasets import kaggle_images, pbc_images, select

MANIFEST = REPO_ROOT / "sample_data" / "manifest.csv"
HOW_TO_GET_DATA = (
    "The sample images are read from the data root ({root}), which was not found or is incomplete. "
    "Download the Kaggle 'Blood Cell Images' dataset (paultimothymooney/blood-cells) into `<data>/blood-cells/` "
    "and the PBC dataset (Acevedo et al. 2020, Mendeley Data doi:10.17632/snkd93bnjr.1) into `<data>/pbc/<class>/`, "
    "then point `HEMATOVISION_DATA` at `<data>` (default: `../shared/data`)."
)


@dataclass(frozen=True)
class Sample:
    relpath: str
    label: str
    source: str


def read_manifest(path: Path = MANIFEST) -> list[Sample]:
    with open(path, newline="") as fh:
        return [Sample(r["relpath"], r["label"], r["source"]) for r in csv.DictReader(fh)]


def load_samples(root: Path | None = None, path: Path = MANIFEST) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``([(relpath, bytes), ...], [missing relpaths])``: what could be read and what could not."""
    root = Path(root) if root else data_root()
    found, missing = [], []
    for s in read_manifest(path):
        f = root / s.relpath
        try:
            found.append((s.relpath, f.read_bytes()))
        except OSError:
            missing.append(s.relpath)
    return found, missing


def labels(path: Path = MANIFEST) -> dict[str, str]:
    """True class per sample relpath, to compare with the model's answer."""
    return {s.relpath: s.label for s in read_manifest(path)}


def build_manifest(root: Path, per_class: int = 4, path: Path = MANIFEST) -> list[Sample]:
    """Pick ``per_class`` images per class from Kaggle TEST and from the PBC test split, evenly spread.

    Only held-out test files are used, so the samples never show the model an image it trained on.
    """
    chosen: list[Sample] = []
    for source, images in (
        ("kaggle", select(kaggle_images(root), split="test")),
        ("pbc", select(pbc_images(root), split="test")),
    ):
        for cls in TRAINING_CLASSES:
            files = sorted((i for i in images if i.label == cls), key=lambda i: i.relpath)
            step = max(1, len(files) // per_class)
            chosen += [Sample(i.relpath, cls, source) for i in files[::step][:per_class]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["relpath", "label", "source"])
        w.writerows([s.relpath, s.label, s.source] for s in chosen)
    return chosen

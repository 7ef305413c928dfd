"""Run the stain-shift suite (:data:`hematovision.evaluation.shifts.SUITE`) on a model: accuracy and per-class
recall per family, on PBC test and Kaggle TEST images.

Why: leave-one-source-out between our two sources (similar purple Romanowsky stains) improved
while other laboratories' images did not move; severe, realistic stain and camera shifts of
images whose labels we trust are the validation that predicts them better. The families whose
parameters the training recipe never draws (``held_out``) are the ones that judge it.

Kaggle TEST is 2,487 copies of 79 smear fields: every ``kaggle_stride``-th image is used (a
fixed, recorded subset) and only the colour families run on it, since its cell is not centred.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import data_root
from ..data import datasets as ds
from ..imaging.decode import read_rgb
from ..modeling import persistence
from ..serving.classifier import Classifier
from ..stats import metrics
from .shifts import SUITE, ShiftFamily

#: Every how many-th Kaggle TEST image the suite uses (in manifest order).
KAGGLE_STRIDE = 6


@dataclass
class FamilyResult:
    family: str
    test_set: str
    held_out: bool
    n: int
    accuracy: float
    ci95: list
    recall: dict  # class -> recall


#: Which images the suite shifts: the test sets (the recorded figures), or the validation split (for choosing a
#: recipe without reading a test set).
SPLITS = ("test", "val")


def _images(model_dir: Path, root: Path, kaggle_stride: int, split: str = "test") -> dict[str, list[ds.LabeledImage]]:
    manifest = ds.read_manifest(Path(model_dir) / persistence.MANIFEST_FILE, root)
    if split == "val":
        return {
            "pbc_val": ds.select(manifest, source="pbc", split="val"),
            "kaggle_val": ds.select(manifest, source="kaggle", split="val")[::kaggle_stride],
        }
    return {
        "pbc_test": ds.test_set(manifest, "pbc_test"),
        "kaggle_test": ds.test_set(manifest, "kaggle_test")[::kaggle_stride],
    }


def run_family(
    clf: Classifier, family: ShiftFamily, rgbs: list[np.ndarray], labels: list[str], test_set: str
) -> FamilyResult:
    """One family on one test set."""
    y = np.array([clf.classes_.index(lab) for lab in labels])
    pred = clf.predict_proba([family.apply(x, k) for k, x in enumerate(rgbs)]).argmax(1)
    ok = int((pred == y).sum())
    recall = {c: float((pred[y == i] == i).mean()) for i, c in enumerate(clf.classes_) if (y == i).any()}
    return FamilyResult(
        family.name, test_set, family.held_out, len(y), ok / len(y), list(metrics.wilson_interval(ok, len(y))), recall
    )


def run_suite(
    model_dir: Path,
    root: Path | None = None,
    kaggle_stride: int = KAGGLE_STRIDE,
    manifest_from: Path | None = None,
    families: tuple[ShiftFamily, ...] = SUITE,
    progress=print,
    split: str = "test",
) -> dict:
    """The suite on one model; the images come from ``manifest_from``'s split manifest (default: the
    model's own), so two models can be compared on the same images. ``split="val"``: the validation
    images instead of the test sets (PBC: all; Kaggle: every ``kaggle_stride``-th)."""
    root = root or data_root()
    clf = Classifier.load(model_dir)
    t0 = time.time()
    sets = _images(Path(manifest_from or model_dir), root, kaggle_stride, split)
    decoded = {k: ([read_rgb(i.path) for i in v], [i.label for i in v]) for k, v in sets.items()}
    results = []
    for fam in families:
        for key, (rgbs, labels) in decoded.items():
            if fam.geometry and not key.startswith("pbc"):
                continue
            r = run_family(clf, fam, rgbs, labels, key)
            results.append(r)
            if progress:
                progress(f"{clf.version} {fam.name:18s} {key:12s} {r.accuracy:.1%}")
    held = [r.accuracy for r in results if r.held_out]
    return {
        "model_version": clf.version,
        "rule": f"each family applied to the {split} images before the model's own framing and preprocessing; "
        f"PBC: all images; Kaggle: every {kaggle_stride}th image (colour families only). "
        "held_out: the family's parameters lie outside what the stain_invariant training recipe draws",
        "families": [
            {"name": f.name, "describe": f.describe, "held_out": f.held_out, "geometry": f.geometry} for f in families
        ],
        "results": [asdict(r) for r in results],
        "mean_accuracy_held_out": float(np.mean(held)) if held else None,
        "worst_held_out": min(((r.accuracy, r.family, r.test_set) for r in results if r.held_out), default=None),
        "seconds": round(time.time() - t0, 1),
    }


def table(reports: list[dict]) -> str:
    """Markdown: one row per family and test set, one accuracy column per model, with the lowest
    per-class recall beside it."""
    models = " | ".join(f"`{r['model_version']}` accuracy (lowest class recall)" for r in reports)
    head = f"| family | held out from training | test set | n | {models} |"
    lines = [head, "|---|---|---|---|" + "---|" * len(reports)]
    index = [{(x["family"], x["test_set"]): x for x in r["results"]} for r in reports]
    for key in index[0]:
        first = index[0][key]
        cells = []
        for idx in index:
            x = idx.get(key)
            if x is None:
                cells.append("–")
                continue
            worst = min(x["recall"].items(), key=lambda kv: kv[1])
            cells.append(f"{x['accuracy']:.1%} ({worst[0]} {worst[1]:.0%})")
        held = "yes" if first["held_out"] else "no"
        lines.append(f"| {key[0]} | {held} | {key[1]} | {first['n']} | " + " | ".join(cells) + " |")
    means = " | ".join(f"**{r['mean_accuracy_held_out']:.1%}**" for r in reports)
    lines.append(f"| **mean over held-out families** | | | | {means} |")
    return "\n".join(lines)


def record_in_model(model_dir: Path, report: dict, key: str = "stain_shift_suite") -> None:
    """Write the suite's report into ``evaluation.json`` and the model card beside a model."""
    model_dir = Path(model_dir)
    ev = model_dir / persistence.EVALUATION_FILE
    if ev.exists():
        data = json.loads(ev.read_text())
        data[key] = report
        ev.write_text(json.dumps(data, indent=1) + "\n")
    brief = {k: v for k, v in report.items() if k != "families"}
    persistence.update_card(model_dir, lambda c: c.training.__setitem__(key, brief))

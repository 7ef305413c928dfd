"""The stain-shift suite's runner on a tiny model and generated images: test sets by default, the validation
split on request (so a recipe can be chosen without reading a test set)."""

from __future__ import annotations

import shutil

import pytest

from conftest import CLASSES, image_bytes
from hematovision.data import datasets as ds
from hematovision.data.datasets import LabeledImage
from hematovision.evaluation import shift_suite
from hematovision.evaluation.shifts import SUITE
from hematovision.modeling import persistence


@pytest.fixture
def suite_model(tiny_model_dir, tmp_path):
    """A copy of the tiny model with a split manifest over generated images: 2 per class, source and split."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    root = tmp_path / "data"
    images, seed = [], 0
    for source in ("pbc", "kaggle"):
        for split in ("val", "test"):
            for label in CLASSES:
                for k in range(2):
                    rel = f"{source}/{split}/{label}/{k}.png"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(image_bytes("PNG", size=(48, 48), seed=seed))
                    images.append(LabeledImage(root / rel, rel, label, source, split, f"g{seed}", "x"))
                    seed += 1
    ds.write_manifest(images, model / persistence.MANIFEST_FILE)
    return model, root


@pytest.mark.parametrize("split, sets", [("test", {"pbc_test", "kaggle_test"}), ("val", {"pbc_val", "kaggle_val"})])
def test_suite_runs_on_the_chosen_split_and_geometry_only_on_pbc(suite_model, split, sets):
    model, root = suite_model
    families = tuple(f for f in SUITE if f.name in ("none", "greyscale", "tight_120"))
    report = shift_suite.run_suite(model, root, kaggle_stride=1, families=families, progress=None, split=split)
    rows = {(r["family"], r["test_set"]): r for r in report["results"]}
    assert {t for _, t in rows} == sets
    pbc, kaggle = sorted(sets, key=lambda s: not s.startswith("pbc"))
    assert ("tight_120", pbc) in rows and ("tight_120", kaggle) not in rows  # the cell crops only exist for PBC
    assert all(r["n"] == 2 * len(CLASSES) and 0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    assert split in report["rule"]

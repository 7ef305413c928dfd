"""The adaptation check's simulated labs: cells never straddle the labeled pool and the held-out set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hematovision.config import TRAINING_CLASSES
from hematovision.data.datasets import LabeledImage
from hematovision.training.adapt_check import draw, lab_split


def _images():
    """Kaggle-like: per class a few fields with many copies each (train and val), plus a test split that must
    never be used; PBC-like: one image per cell, in three splits."""
    out = []
    for c in TRAINING_CLASSES:
        for f in range(7):
            for k in range(9):
                split = "val" if f == 6 else "train"
                out.append(LabeledImage(Path(f"/k/{c}/{f}_{k}"), f"k/{c}/{f}_{k}", c, "kaggle", split, f"kg/{c}/{f}"))
        out.append(LabeledImage(Path(f"/k/{c}/t"), f"k/{c}/t", c, "kaggle", "test", f"kt/{c}"))
        for k in range(30):
            split = ("train", "val", "test")[k % 3]
            out.append(LabeledImage(Path(f"/p/{c}/{k}"), f"p/{c}/{k}", c, "pbc", split, f"pbc/{c}/{k}"))
    return out


def test_kaggle_lab_splits_by_field_and_never_uses_test():
    lab = lab_split(_images(), "kaggle", test_per_class=10, unlabeled_per_class=3)
    pool_groups = {i.group for items in lab.pool.values() for i in items}
    test_groups = {i.group for i in lab.test}
    assert pool_groups and test_groups and not pool_groups & test_groups
    assert all(i.split in ("train", "val") for i in lab.test + lab.unlabeled)
    for c in TRAINING_CLASSES:
        held = [i for i in lab.test if i.label == c]
        assert len(held) == 10 and len({i.group for i in held}) == 3  # round-robin over the held-out fields
        assert {i.label for i in lab.pool[c]} == {c}
    assert {i.group for i in lab.unlabeled} <= pool_groups and len(lab.unlabeled) == 12


def test_pbc_lab_uses_the_validation_split_only():
    lab = lab_split(_images(), "pbc", test_per_class=100)
    every = lab.test + [i for items in lab.pool.values() for i in items]
    assert {i.split for i in every} == {"val"} and len(every) == 40
    assert not {i.relpath for i in lab.test} & {i.relpath for items in lab.pool.values() for i in items}


def test_a_draw_takes_distinct_cells_first_then_copies():
    pool = lab_split(_images(), "kaggle", test_per_class=10).pool["monocyte"]
    picked = draw(pool, 6, np.random.default_rng(0))
    assert len(picked) == 6 and len({i.group for i in picked}) == 4  # 4 fields in the pool: 4 cells, then copies
    assert draw(pool, 6, np.random.default_rng(0)) == picked
    assert draw(pool, 6, np.random.default_rng(1)) != picked

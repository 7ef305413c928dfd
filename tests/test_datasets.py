"""Split rules: grouped Kaggle validation, hash-based PBC split, de-duplication."""

from pathlib import Path

from conftest import image_bytes
from hematovision.data import datasets as ds
from hematovision.data.layout import KAGGLE_DIR, normalise_label


def _kaggle(root: Path, split: str, cls: str, cell: int, copy: int, seed: int):
    d = root / KAGGLE_DIR / split / cls
    d.mkdir(parents=True, exist_ok=True)
    (d / f"_{cell}_{copy}.jpeg").write_bytes(image_bytes("JPEG", seed=seed))


def test_kaggle_copies_of_one_cell_never_straddle_train_and_val(tmp_path):
    for cell in range(30):
        for copy in range(3):
            _kaggle(tmp_path, "TRAIN", "EOSINOPHIL", cell, copy, cell * 10 + copy)
    images = ds.kaggle_images(tmp_path)
    by_group = {}
    for i in images:
        by_group.setdefault(i.group, set()).add(i.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert {"train", "val"} == set().union(*by_group.values())
    assert all(i.label == "eosinophil" for i in images)


def test_pbc_duplicates_removed_and_split_by_hash(tmp_path):
    d = tmp_path / "pbc" / "Monocyte"
    d.mkdir(parents=True)
    for k in range(40):
        (d / f"MO_{k}.jpg").write_bytes(image_bytes("JPEG", size=(64 + k, 48), seed=k))
    (d / "MO_dup.jpg").write_bytes(image_bytes("JPEG", size=(64, 48), seed=0))
    images = ds.pbc_images(tmp_path)
    assert len(images) == 40
    for i in images:
        frac = int(i.sha256[:8], 16) / 2 ** 32
        assert i.split == ("train" if frac < 0.7 else "val" if frac < 0.85 else "test")


def test_manifest_round_trip(tmp_path):
    _kaggle(tmp_path, "TEST", "NEUTROPHIL", 1, 1, 1)
    images = ds.discover(tmp_path)
    ds.write_manifest(images, tmp_path / "m.csv")
    again = ds.read_manifest(tmp_path / "m.csv", tmp_path)
    assert [(i.relpath, i.split, i.label) for i in again] == [(i.relpath, i.split, i.label) for i in images]
    assert again[0].split == "test"


def test_label_normalisation():
    assert normalise_label("EOSINOPHIL") == "eosinophil"
    assert normalise_label("Lymphocytes") == "lymphocyte"
    assert normalise_label("basophil") is None

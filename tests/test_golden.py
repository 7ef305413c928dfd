"""Golden checks of the shipped model on real held-out images from the data root.

Skipped, with the reason, where ../shared (or $HEMATOVISION_DATA) is absent.
"""

import json

import pytest

from hematovision.config import DEFAULT_MODEL_DIR
from hematovision.data import datasets as ds
from hematovision.imaging.sources import ImageInput
from hematovision.modeling import persistence
from hematovision.serving.classifier import Classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    if not (DEFAULT_MODEL_DIR / persistence.MODEL_FILE).exists():
        pytest.skip("no shipped model in models/")
    return Classifier.load(DEFAULT_MODEL_DIR)


def _pick(images, key, per_class):
    subset = ds.test_set(images, key)
    out = []
    for cls in ("eosinophil", "lymphocyte", "monocyte", "neutrophil"):
        out += [i for i in subset if i.label == cls][:per_class]
    return out


def test_shipped_model_on_real_test_images(shipped, data_root):
    images = ds.read_manifest(DEFAULT_MODEL_DIR / persistence.MANIFEST_FILE, data_root)
    picked = _pick(images, "pbc_test", 4) + _pick(images, "kaggle_test_simple", 2)
    preds = list(shipped.classify([ImageInput(i.relpath, (lambda p=i.path: p.read_bytes())) for i in picked]))
    correct = sum(p.predicted_class == i.label for p, i in zip(preds, picked))
    pbc_correct = sum(p.predicted_class == i.label for p, i in zip(preds[:16], picked[:16]))
    assert all(p.ok for p in preds)
    # A model at its measured ~99% on PBC test gets 2 of 16 wrong about 1% of the time and 3 about 0.05%:
    # 14 is the floor that a sound model passes and a broken one (e.g. one class lost: 12/16) fails.
    assert pbc_correct >= 14, [(i.relpath, p.predicted_class) for p, i in zip(preds, picked)]
    assert correct >= 20


def test_shipped_card_and_evaluation_are_consistent(shipped):
    card = shipped.card
    ev = json.loads((DEFAULT_MODEL_DIR / persistence.EVALUATION_FILE).read_text())
    assert ev["model_version"] == card.version
    assert card.classes == ev["classes"] and 0 < card.default_threshold < 1
    assert {"kaggle_test", "kaggle_test_simple", "pbc_test"} <= set(ev["sets"])
    assert persistence.sha256_of(DEFAULT_MODEL_DIR / persistence.MODEL_FILE) == card.model_sha256


def test_split_manifest_has_no_cell_across_train_and_val(data_root):
    images = ds.read_manifest(DEFAULT_MODEL_DIR / persistence.MANIFEST_FILE, data_root)
    splits = {}
    for i in images:
        splits.setdefault(i.group, set()).add(i.split)
    assert not [g for g, s in splits.items() if {"train", "val"} <= s]
    hashes = [i.sha256 for i in images if i.source == "pbc"]
    assert len(hashes) == len(set(hashes))

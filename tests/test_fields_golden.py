"""Golden check of whole-field detection and classification on real BCCD test fields.

Skipped, with the reason, where ../shared (or $HEMATOVISION_DATA) is absent.
"""

import pytest

from hematovision.config import DEFAULT_MODEL_DIR
from hematovision.detection import bccd
from hematovision.detection.cells import classify_fields
from hematovision.imaging.sources import ImageInput
from hematovision.modeling import persistence
from hematovision.serving.classifier import Classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_fields(data_root):
    if not (data_root / bccd.BCCD_DIR / "Annotations").is_dir():
        pytest.skip(f"BCCD fields not found under {data_root / bccd.BCCD_DIR}")
    fields = [f for f in bccd.read_fields(data_root) if f.split == "test" and f.wbc]
    return fields[:12]  # 13 annotated white cells; the detector found all 13 (one extra box) when this was written


def test_white_cells_found_on_real_test_fields(test_fields):
    if not (DEFAULT_MODEL_DIR / persistence.MODEL_FILE).exists():
        pytest.skip("no shipped model in models/")
    clf = Classifier.load(DEFAULT_MODEL_DIR)
    results = list(classify_fields(clf, [ImageInput(f.name, (lambda p=f.image: p.read_bytes())) for f in test_fields]))
    assert [r.file for r in results] == [f.name for f in test_fields] and all(r.ok for r in results)
    s = bccd.evaluate(test_fields, results)
    # At the measured ~98% recall / ~96% precision, missing 2 of 13 or adding 3 boxes is rare; a detector
    # that loses a stain or a size rule (e.g. returns nucleus-only boxes) fails both.
    assert s.boxes.matched >= 12, (s.missed, s.extra)
    assert s.boxes.found <= 15, s.extra
    # the shipped model on found cells: 10 of 11 right when written (79.6% over the whole test split)
    assert s.class_found >= 10 and s.class_correct >= 7

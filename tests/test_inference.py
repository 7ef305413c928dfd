"""The inference API on a tiny model: order, typed results, error rows, thresholds."""

import numpy as np
import pytest

from conftest import image_bytes
from hematovision.imaging.sources import ImageInput, from_bytes
from hematovision.modeling import persistence
from hematovision.reports.tables import apply_threshold, neutralise, predictions_frame, to_csv
from hematovision.serving.classifier import Classifier, is_flagged


@pytest.fixture(scope="module")
def clf(tiny_model_dir):
    return Classifier.load(tiny_model_dir, batch_size=4)


def test_classes_and_metadata_come_from_the_card(clf):
    assert clf.classes_ == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert clf.input_size == 32 and clf.default_threshold == pytest.approx(0.3)
    assert clf.version.startswith("tiny-test-model@")


def test_batch_in_order_with_error_rows(clf):
    inputs = [from_bytes(f"img{k}.png", image_bytes(seed=k)) for k in range(9)]
    inputs.insert(3, from_bytes("broken.jpg", b"\xff\xd8\xff garbage"))
    inputs.insert(6, ImageInput("missing.png", error="no such file or folder"))
    preds = list(clf.classify(inputs, threshold=0.5, thumbnails=True))
    assert [p.file for p in preds] == [i.name for i in inputs]
    bad = [p for p in preds if not p.ok]
    assert [p.file for p in bad] == ["broken.jpg", "missing.png"]
    for p in preds:
        if p.ok:
            assert len(p.probabilities) == 4 and sum(p.probabilities) == pytest.approx(1, abs=1e-5)
            assert (
                p.confidence == max(p.probabilities)
                and p.predicted_class == clf.classes_[int(np.argmax(p.probabilities))]
            )
            assert p.flagged == (p.confidence < 0.5) and p.thumbnail is not None


def test_predict_proba_matches_classify(clf):
    from hematovision.imaging.decode import decode_image

    data = [image_bytes(seed=k, size=(50 + k, 40)) for k in range(5)]
    probs = clf.predict_proba([decode_image(d).rgb for d in data])
    preds = list(clf.classify([from_bytes(str(k), d) for k, d in enumerate(data)]))
    assert np.allclose(probs, [p.probabilities for p in preds], atol=1e-6)


def test_threshold_recomputation_needs_no_inference(clf):
    preds = list(clf.classify([from_bytes(f"{k}.png", image_bytes(seed=k)) for k in range(4)] + [from_bytes("x", b"")]))
    frame = predictions_frame(preds, clf.classes_)
    strict = apply_threshold(frame, 1.0)
    assert strict["flagged"].tolist() == [True] * 4 + [False]
    assert not apply_threshold(frame, 0.0)["flagged"].any()
    assert is_flagged(0.2, 0.3) and not is_flagged(0.3, 0.3)


def test_csv_neutralises_formulas(clf):
    preds = list(clf.classify([from_bytes("=cmd|' /C calc'!A0.png", image_bytes())]))
    text = to_csv(predictions_frame(preds, clf.classes_), threshold=0.5, model_version=clf.version)
    assert "'=cmd" in text and "threshold" in text.splitlines()[0]
    assert neutralise("@x") == "'@x" and neutralise("ok") == "ok"
    # a negative score written as text is a number to a spreadsheet, not a formula; anything more is quoted
    assert neutralise("-0.0071") == "-0.0071" and neutralise("-1+cmd|x") == "'-1+cmd|x"
    assert neutralise("\t-1") == "'\t-1" and neutralise("-1\r") == "'-1\r"


def test_missing_and_corrupt_models_give_clear_errors(tmp_path, tiny_model_dir):
    with pytest.raises(persistence.ModelError, match="no model card"):
        Classifier.load(tmp_path)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / persistence.MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(persistence.ModelError, match="sha256"):
        Classifier.load(bad)


def test_default_threshold_in_force_is_the_rounded_one_the_dashboard_shows(tmp_path, tiny_model_dir, clf):
    """A card's fitted threshold (e.g. 0.90530) flags exactly as the dashboard's 0.905 does, in every path that uses
    the model's default: an image between the two is accepted."""
    import math
    import shutil

    from hematovision.stats import round_threshold

    inputs = [from_bytes(f"img{k}.png", image_bytes(seed=k)) for k in range(16)]
    conf = [p.confidence for p in clf.classify(inputs, threshold=0.0)]
    k, c = next((k, c) for k, c in enumerate(conf) if c - math.floor(c * 1000) / 1000 < 0.0004)
    fitted = math.floor(c * 1000) / 1000 + 0.0004  # above this image's confidence, rounds to below it
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    persistence.update_card(model, lambda card: card.__dict__.update(default_threshold=fitted))
    other = Classifier.load(model, batch_size=4)
    assert other.default_threshold == round_threshold(fitted) <= c < fitted
    preds = list(other.classify(inputs))
    assert not preds[k].flagged
    assert [p.flagged for p in preds] == [p.confidence < round_threshold(fitted) for p in preds]

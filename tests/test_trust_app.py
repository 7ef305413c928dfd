"""The Classify page's domain-shift banner, Unidentified count and filter (AppTest, tiny model with a trust file)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import CLASSES, image_bytes, make_tiny_model_dir
from hematovision.detection.synthetic import WhiteCell, make_field
from hematovision.modeling import persistence, unfamiliar, versions

pytestmark = pytest.mark.filterwarnings("ignore")
HOME = str(Path(__file__).resolve().parent.parent / "Home.py")


def _trust_file(model_dir: Path, everything_unfamiliar: bool) -> None:
    """A trust.npz for the tiny model whose threshold calls every image unfamiliar (or none), 5% expected
    in-domain."""
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(30, 8))
    sha = persistence.load_card(model_dir).model_sha256
    tm = unfamiliar.fit(bank, bank + 0.01, np.full((30, 4), 0.25), k=2, model_sha256=sha, dims=None)
    tm.threshold = -1e9 if everything_unfamiliar else 1e9
    tm.val_scores = (
        np.r_[np.full(95, -2e9), np.zeros(5)] if everything_unfamiliar else np.zeros(100)
    ).astype(np.float32)
    unfamiliar.save(tm, model_dir)


def _page_after_upload(monkeypatch, model_dir: Path, n: int) -> AppTest:
    monkeypatch.setenv("HEMATOVISION_MODEL", str(model_dir))
    at = AppTest.from_file(HOME, default_timeout=90)
    at.run()
    at.switch_page("pages/classify.py").run()
    files = [(f"cell{k}.png", image_bytes("PNG", seed=k), "image/png") for k in range(n)]
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str):
    return next(m.value for m in at.metric if m.label == label)


def _results(at: AppTest):
    return next(d.value for d in at.dataframe if "predicted_class" in d.value.columns)


def test_banner_unidentified_count_and_filter_when_the_batch_is_unfamiliar(monkeypatch, tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    _trust_file(d, everything_unfamiliar=True)
    at = _page_after_upload(monkeypatch, d, 20)
    text = " ".join(w.value for w in at.warning)
    assert "unlike the images the model was trained on" in text and "Model versions" in text
    assert str(_metric(at, "Unidentified")) == "20" and str(_metric(at, "Flagged for review")) == "20"
    diff = next(df.value for df in at.dataframe if "percent" in df.value.columns)
    assert diff["count"].sum() == 0  # unfamiliar cells are left out of the differential
    at.checkbox(key="hv_unidentified_only").check().run()
    assert not at.exception, at.exception
    assert len(_results(at)) == 20
    at.button(key="hv_review_sample").click().run()  # the guided path's first step: a balanced sample for review
    assert not at.exception, at.exception
    assert any("20 cells on the review list" in s.value for s in at.success)


def test_no_banner_for_a_familiar_batch(monkeypatch, tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    _trust_file(d, everything_unfamiliar=False)
    at = _page_after_upload(monkeypatch, d, 20)
    assert not any("unlike the images" in w.value for w in at.warning)
    assert str(_metric(at, "Unidentified")) == "0"
    assert not any(b.key == "hv_review_sample" for b in at.button)  # no banner, no sample to offer
    diff = next(df.value for df in at.dataframe if "percent" in df.value.columns)
    assert diff["count"].sum() == 20
    at.checkbox(key="hv_unidentified_only").check().run()
    assert len(_results(at)) == 0


def test_batch_classified_again_with_another_version_shows_the_differential_before_and_after(monkeypatch, tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    at = _page_after_upload(monkeypatch, d, 4)
    assert not any("by model version" in e.label for e in at.expander)  # one version so far
    other = make_tiny_model_dir(versions.adapted_root() / "lab-before-after", temperature=3.0)
    at.session_state["hv_model_path"] = str(other)  # what the sidebar's version picker sets (app.state.use_model)
    at.run()
    assert not at.exception, at.exception
    assert any("by model version" in e.label for e in at.expander)
    table = next(df.value for df in at.dataframe if df.value.index.name == "class")
    assert table.shape == (4, 2)  # the four classes under both versions


def test_adapt_from_a_batchs_reviews_on_the_review_page_switches_to_the_new_version(monkeypatch, tmp_path):
    from test_adapt import _blobs

    from hematovision.review.store import ReviewStore, thumbnail_png
    from hematovision.serving.classifier import Prediction

    d = make_tiny_model_dir(tmp_path / "m")
    version = persistence.load_card(d).version
    monkeypatch.setenv("HEMATOVISION_MODEL", str(d))
    monkeypatch.setenv("HEMATOVISION_REVIEW_DB", str(tmp_path / "reviews.sqlite3"))
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    images, labels = _blobs(3)
    preds = [Prediction(f"c{k}.png", "neutrophil", 0.5, (0.1, 0.1, 0.3, 0.5), True, "", f"{k:064x}")
             for k in range(len(images))]
    store.queue(preds, CLASSES, version, {p.sha256: thumbnail_png(im) for p, im in zip(preds, images)}, batch="b1",
                sent=True)
    for p, lbl in zip(preds, labels):
        store.decide(p.sha256, version, lbl, "tester")
    other = [Prediction(f"o{k}.png", "neutrophil", 0.5, (0.1, 0.1, 0.3, 0.5), True, "", f"{k + 100:064x}")
             for k in range(4)]  # reviewed in another batch: not this batch's adaptation
    store.queue(other, CLASSES, version, {p.sha256: thumbnail_png(images[0]) for p in other}, batch="b2", sent=True)
    for p in other:
        store.decide(p.sha256, version, "eosinophil", "tester")
    store.decide(preds[-1].sha256, version, "unusable", "tester")
    at = AppTest.from_file(HOME, default_timeout=90)
    at.run()
    at.switch_page("pages/review.py").run()
    assert any("pick a batch above" in c.value for c in at.caption)  # All batches: no adaptation here, and why
    at.selectbox(key="hv_review_batch").set_value("b1").run()
    used = len(images) - 1
    assert any(e.label == f"Adapt from these reviews ({used} reviewed in this batch; 1 marked unusable, left out)"
               for e in at.expander)
    at.text_input(key="hv_review_adapt_name").set_value("lab-guided")
    next(b for b in at.button if b.label == "Adapt from these reviews").click().run()
    assert not at.exception, at.exception
    assert any("lab-guided" in s.value and "before and after" in s.value for s in at.success)
    assert at.session_state["hv_model_path"] == str(versions.adapted_root() / "lab-guided")
    counts = persistence.load_card(versions.adapted_root() / "lab-guided").training["adaptation"]["labeled_counts"]
    assert sum(counts.values()) == used  # this batch's decisions, none of b2's
    assert any("not refitted" in w.value for w in at.warning)  # the tiny parent has no split to refit from


def _shifted_trust_file(model_dir: Path) -> None:
    """A trust.npz calling no image unfamiliar one by one, but whose validation scores all sit far below any batch's:
    every batch of 20 or more is called shifted by the score-distribution rule."""
    _trust_file(model_dir, everything_unfamiliar=False)
    tm = unfamiliar.load(model_dir, persistence.load_card(model_dir).model_sha256)
    tm.val_scores = np.full(100, -2e9, np.float32)
    unfamiliar.save(tm, model_dir)


def test_a_shifted_batch_is_held_for_review(monkeypatch, tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    _shifted_trust_file(d)
    at = _page_after_upload(monkeypatch, d, 20)
    text = " ".join(w.value for w in at.warning)
    assert "unlike the images the model was trained on" in text and "Held for review" in text
    assert str(_metric(at, "Unidentified")) == "0" and str(_metric(at, "Flagged for review")) == "20"
    rows = _results(at)
    assert rows["flagged"].all() and "batch_shift" in set(rows["flag_reason"])
    assert set(rows["flag_reason"]) <= {"batch_shift", "low_confidence"}
    diff = next(df.value for df in at.dataframe if "percent" in df.value.columns)
    assert diff["count"].sum() == 20  # held cells stay in the (provisional) differential


def test_whole_fields_mode_shows_the_banner_and_holds_a_shifted_batch(monkeypatch, tmp_path):
    d = make_tiny_model_dir(tmp_path / "m")
    _shifted_trust_file(d)
    monkeypatch.setenv("HEMATOVISION_MODEL", str(d))
    at = AppTest.from_file(HOME, default_timeout=90)
    at.run()
    at.switch_page("pages/classify.py").run()
    at.radio(key="hv_mode").set_value("Whole fields").run()
    cells = (WhiteCell(150, 140, 60, 3), WhiteCell(460, 300, 55, 1), WhiteCell(300, 380, 65, 4))
    files = [(f"f{k}.png", cv2.imencode(".png", make_field(cells=cells, seed=k))[1].tobytes(), "image/png")
             for k in range(8)]
    at.file_uploader(key="hv_fields_uploader").set_value(files).run()
    assert not at.exception, at.exception
    table = next(t.value for t in at.dataframe if "cell" in t.value.columns)
    assert table["cell"].notna().sum() >= 20 and table.loc[table["cell"].notna(), "flagged"].all()
    assert "batch_shift" in set(table["flag_reason"])
    assert "Held for review" in " ".join(w.value for w in at.warning)
    assert str(_metric(at, "Unidentified")) == "0"

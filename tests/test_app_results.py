"""The Classify page's results helpers (hematovision.app.results): review columns, table layout, detail reviews."""

from __future__ import annotations

from conftest import CLASSES
from hematovision.app import batching, results
from hematovision.review.store import UNUSABLE, ReviewStore
from hematovision.serving.classifier import Prediction


def _preds():
    return [
        Prediction("a.png", "lymphocyte", 0.95, (0.01, 0.95, 0.02, 0.02), False, "", "a" * 64),
        Prediction("b.png", "monocyte", 0.40, (0.2, 0.1, 0.4, 0.3), True, "", "b" * 64),
        Prediction("c.png", error="could not decode", sha256="c" * 64),
    ]


def test_decisions_become_final_classes_of_this_model_version_only(tmp_path):
    preds = _preds()
    frame = batching.results_frame(preds, ["", "", ""], CLASSES, 0.5)
    plain, none = results.with_decisions(frame, None, "m@1")
    assert none == {} and list(plain["final_class"]) == ["lymphocyte", "monocyte", ""]
    assert set(plain["model_version"]) == {"m@1"}

    store = ReviewStore(tmp_path / "r.sqlite3")
    results.save_review(store, preds[0], b"", False, CLASSES, "m@1", 0.5, "neutrophil", "ann", "granules")
    results.save_review(store, preds[1], None, True, CLASSES, "m@2", 0.5, UNUSABLE, "bob", "")
    reviewed, decisions = results.with_decisions(frame, store, "m@1")
    assert set(decisions) == {"a" * 64}
    assert list(reviewed["final_class"]) == ["neutrophil", "monocyte", ""]
    assert list(reviewed["reviewer"]) == ["ann", "", ""]
    item = next(i for i in store.items() if i.sha256 == "a" * 64)
    assert item.flagged is False or item.flagged == 0  # queued as it was: not flagged
    assert store.current("m@2")[("b" * 64, "m@2")].reviewed_class == UNUSABLE


def test_table_columns_cover_every_class_and_the_figures_carry_the_numbers():
    cfg, order = results.table_columns(CLASSES)
    assert [c for c in order if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    # A leading status, the framed cell, the short name; the full path and the model version last.
    assert set(order) <= set(cfg) and order[:4] == ["status", "thumbnail", "name", "predicted_class"]
    assert order[-2:] == ["file", "model_version"]
    frame = batching.results_frame(_preds(), ["", "", ""], CLASSES, 0.5)
    fig = results.probability_figure(frame, 1, CLASSES)
    assert "monocyte (0.400)" in fig.layout.title.text and list(fig.data[0].x) == [0.2, 0.1, 0.4, 0.3]


def test_missing_samples_note():
    assert results.missing_samples_note(32, 0, "/data") == ""
    note = results.missing_samples_note(30, 2, "/data")
    assert note.startswith("2 of 32 sample images are missing.") and "/data" in note


def test_detail_images_without_and_with_a_failing_grad_cam(monkeypatch):
    rgb = object()
    assert results.detail_images(None, "s", rgb, "a.png", False) == ([rgb], ["a.png"], "")

    def broken(*a):
        raise RuntimeError("no network")

    monkeypatch.setattr(results.app_state, "gradcam_overlay", broken)
    shown, captions, warning = results.detail_images(None, "s", rgb, "a.png", True)
    assert (shown, captions, warning) == ([rgb], ["a.png"], "Grad-CAM unavailable (RuntimeError: no network).")
    monkeypatch.setattr(results.app_state, "gradcam_overlay", lambda clf, sha, source, img: ("overlay", "monocyte"))
    shown, captions, warning = results.detail_images(None, "s", rgb, "a.png", True)
    assert (shown, captions, warning) == ([rgb, "overlay"], ["a.png", "Grad-CAM for 'monocyte'"], "")


def test_table_rows_lead_with_a_status_a_short_name_and_local_review_times(tmp_path):
    from hematovision.app import display

    preds = _preds()
    preds[0] = Prediction("batch.zip/x/a.png", "lymphocyte", 0.95, (0.01, 0.95, 0.02, 0.02), False, "", "a" * 64)
    frame = batching.results_frame(preds, ["", "", ""], CLASSES, 0.5)
    store = ReviewStore(tmp_path / "r.sqlite3")
    results.save_review(store, preds[0], b"", False, CLASSES, "m@1", 0.5, "neutrophil", "ann", "", batch="upload A")
    reviewed, _ = results.with_decisions(frame, store, "m@1")
    rows = results.table_rows(reviewed, "Europe/Berlin")
    assert list(rows["status"]) == [display.REVIEWED_MARK, display.FLAGGED_MARK, display.ERROR_MARK]
    assert list(rows["name"]) == ["x/a.png", "b.png", "c.png"] and rows.loc[0, "file"] == "batch.zip/x/a.png"
    assert rows.loc[0, "reviewed_at"] == display.local_time(reviewed.loc[0, "reviewed_at"], "Europe/Berlin") != ""
    assert not rows.loc[0, "reviewed_at"].endswith("UTC") and rows.loc[1, "reviewed_at"] == ""
    assert store.items("m@1")[0].batch == "upload A"


def test_send_to_review_puts_an_accepted_image_on_the_list(tmp_path):
    preds = _preds()
    store = ReviewStore(tmp_path / "r.sqlite3")
    assert not results.on_review_list(store, "a" * 64, "m@1", 0.5)
    assert results.send_to_review(store, preds[0], None, False, CLASSES, "m@1", 0.5, batch="upload A") == 1
    # Confidence 0.95 is above the threshold: it is on the list only because it was sent.
    assert results.on_review_list(store, "a" * 64, "m@1", 0.5)
    [item] = store.items("m@1")
    assert item.sent and not item.flagged and item.batch == "upload A"

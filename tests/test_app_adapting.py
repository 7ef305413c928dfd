"""What the Model versions page's Adapt button runs (hematovision.app.adapting), without a browser."""

from __future__ import annotations

import io
import zipfile

import cv2
from test_adapt import _blobs

from conftest import CLASSES, make_tiny_model_dir
from hematovision.app import adapting
from hematovision.modeling import persistence, versions
from hematovision.review.store import ReviewStore, thumbnail_png
from hematovision.serving.classifier import Prediction


def _zip(n: int, classes=CLASSES, extra: dict[str, bytes] | None = None) -> bytes:
    images, labels = _blobs(n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, (img, lbl) in enumerate(zip(images, labels)):
            if lbl in classes:
                zf.writestr(f"{lbl}/{k}.png", cv2.imencode(".png", img[..., ::-1])[1].tobytes())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_zip_becomes_a_new_version_with_a_summary_and_the_skipped_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_HOME", str(tmp_path / "home"))
    base = make_tiny_model_dir(tmp_path / "base")
    stray = cv2.imencode(".png", _blobs(1)[0][0][..., ::-1])[1].tobytes()
    seen = []
    attempt = adapting.adapt_version(base, " lab-z ", zip_upload=("lab.zip", _zip(5, extra={"basophil/b.png": stray})),
                                     progress=lambda k, n: seen.append((k, n)))
    assert attempt.ok and not attempt.error, attempt.error
    res = attempt.outcome
    assert res.path == versions.adapted_root() / "lab-z" and (res.path / persistence.CARD_FILE).is_file()
    assert res.counts == dict.fromkeys(CLASSES, 5) and seen[-1] == (20, 20)
    head = f"**{res.version}** saved: adapted from `{res.parent}` on 20 images"
    assert attempt.summary.startswith(head)
    # Saving does not switch: the message says which version is in use.
    assert attempt.message(False).endswith("the model in use has not changed.")
    assert attempt.message(True).endswith("It is now in use.")
    assert [f for f, _ in attempt.skipped] == ["basophil/b.png"]
    assert persistence.load_card(res.path).training["adaptation"]["source"] == "lab.zip"
    # the unfamiliar-cell refit follows, reported apart: this parent has no split manifest to refit from
    assert attempt.trust is not None and not attempt.trust.fitted
    assert "has no split_manifest.csv" in attempt.trust_text and "without the unfamiliar-cell check" in (
        attempt.trust_text
    )


def test_too_few_images_or_a_used_name_is_a_message_with_the_skipped_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_HOME", str(tmp_path / "home"))
    base = make_tiny_model_dir(tmp_path / "base")
    attempt = adapting.adapt_version(base, "lab-short", zip_upload=("lab.zip", _zip(3, CLASSES[:3], {"x/y.png": b"?"})))
    assert not attempt.ok and attempt.summary == ""
    assert "too few for: neutrophil (0)" in attempt.error
    assert [f for f, _ in attempt.skipped] == ["x/y.png"]
    assert not (versions.adapted_root() / "lab-short").exists()

    assert adapting.adapt_version(base, "lab-once", zip_upload=("lab.zip", _zip(3))).ok
    again = adapting.adapt_version(base, "lab-once", zip_upload=("lab.zip", _zip(3)))
    assert not again.ok and "exists" in again.error


def test_review_decisions_are_read_from_the_store(tmp_path):
    base = make_tiny_model_dir(tmp_path / "base")
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    images, labels = _blobs(2)
    preds = [Prediction(f"c{k}.png", "neutrophil", 0.5, (0.1, 0.1, 0.3, 0.5), True, "", f"{k:064x}")
             for k in range(len(images))]
    store.queue(preds, CLASSES, "tiny@1", {p.sha256: thumbnail_png(img) for p, img in zip(preds, images)})
    for p, lbl in zip(preds, labels):
        store.decide(p.sha256, "tiny@1", lbl, "tester")
    labeled, origin = adapting.labeled_images(base, store=store)
    assert sorted(labeled.labels) == sorted(labels) and origin == f"review decisions, all batches ({store.path})"

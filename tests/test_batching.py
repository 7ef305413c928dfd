"""Unit tests of the classify page's logic (no Streamlit, no TensorFlow: a fake classifier)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from hematovision.app import batching
from hematovision.serving.classifier import Prediction

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


class FakeClassifier:
    """Deterministic stand-in: confidence from the first byte; bytes starting with b'BAD' fail to decode."""

    classes_ = CLASSES

    def __init__(self, version="fake@1"):
        self.version = version
        self.seen: list[str] = []

    def classify(self, inputs, threshold=None, thumbnails=False, progress=None):
        for n, item in enumerate(inputs, 1):
            data = item.read()
            self.seen.append(item.name)
            if data.startswith(b"BAD"):
                pred = Prediction(item.name, error="not an image (unrecognised format)")
            else:
                conf = 0.25 + 0.75 * (data[0] / 255)
                rest = (1 - conf) / 3
                k = data[0] % 4
                probs = tuple(conf if j == k else rest for j in range(4))
                pred = Prediction(
                    item.name, CLASSES[k], conf, probs, conf < threshold, thumbnail=np.zeros((4, 4, 3), np.uint8)
                )
            if progress:
                progress(n)
            yield pred


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return buf.getvalue()


def run(batch, clf, cache, threshold=0.5):
    entries = batching.plan_uploads(batch)
    batching.classify_pending(clf, entries, cache, threshold)
    preds, thumbs = batching.assemble(entries, cache, clf.version)
    return batching.results_frame(preds, thumbs, CLASSES, threshold)


def test_errors_become_rows_and_order_is_kept():
    clf, cache = FakeClassifier(), batching.ResultCache()
    batch = [
        ("a.png", bytes([10, 1])),
        ("empty.png", b""),
        ("bad.png", b"BADBAD"),
        ("cells.zip", _zip({"c.png": bytes([200]), "d.png": bytes([77])})),
    ]
    frame = run(batch, clf, cache)
    assert list(frame["file"]) == ["a.png", "empty.png", "bad.png", "cells.zip/c.png", "cells.zip/d.png"]
    assert frame.loc[1, "error"] == "empty file (0 bytes)"
    assert "not an image" in frame.loc[2, "error"]
    assert (frame.loc[[0, 3, 4], "error"] == "").all()
    assert frame.loc[0, "thumbnail"].startswith("data:image/jpeg;base64,")
    assert frame.loc[1, "thumbnail"] == ""
    assert "empty.png" not in clf.seen  # nothing to send to the model


def test_cached_images_are_never_classified_again():
    clf, cache = FakeClassifier(), batching.ResultCache()
    run([("a.png", bytes([10])), ("b.png", bytes([250]))], clf, cache)
    assert cache.inferred == 2
    # same bytes under new names, plus a duplicate inside the batch, plus one new image
    frame = run(
        [("again.png", bytes([10])), ("b.png", bytes([250])), ("dup.png", bytes([99])), ("dup2.png", bytes([99]))],
        clf,
        cache,
        threshold=0.9,
    )
    assert cache.inferred == 3 and clf.seen == ["a.png", "b.png", "dup.png"]
    assert list(frame["file"]) == ["again.png", "b.png", "dup.png", "dup2.png"]
    assert frame.loc[2, "confidence"] == frame.loc[3, "confidence"]
    # a new model version is a new key
    run([("a.png", bytes([10]))], FakeClassifier("fake@2"), cache)
    assert cache.inferred == 4


def test_threshold_only_changes_flags():
    clf, cache = FakeClassifier(), batching.ResultCache()
    entries = batching.plan_uploads([("lo.png", bytes([0])), ("hi.png", bytes([255])), ("bad.png", b"BAD")])
    batching.classify_pending(clf, entries, cache, 0.5)
    preds, thumbs = batching.assemble(entries, cache, clf.version)
    low = batching.results_frame(preds, thumbs, CLASSES, 0.1)
    high = batching.results_frame(preds, thumbs, CLASSES, 0.99)
    assert list(low["flagged"]) == [False, False, False]
    assert list(high["flagged"]) == [True, False, False]  # errors are never "flagged"
    assert batching.classify_pending(clf, entries, cache, 0.99) == 0
    assert cache.inferred == 3  # the undecodable file went to the classifier once; its error is cached too


def test_progress_reports_done_and_total():
    clf, cache = FakeClassifier(), batching.ResultCache()
    calls = []
    entries = batching.plan_uploads([(f"{i}.png", bytes([i])) for i in range(3)])
    batching.classify_pending(clf, entries, cache, 0.5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def _frame():
    clf, cache = FakeClassifier(), batching.ResultCache()
    # first byte k -> class k % 4; confidence 0.25 + 0.75 k/255
    return run(
        [
            ("e.png", bytes([200])),
            ("l.png", bytes([5])),
            ("m.png", bytes([254])),
            ("bad.png", b"BAD"),
            ("n.png", bytes([3])),
        ],
        clf,
        cache,
        threshold=0.5,
    )


def test_filters():
    frame = _frame()
    F = batching.Filters
    assert list(batching.filter_frame(frame, F())["file"]) == list(frame["file"])
    assert list(batching.filter_frame(frame, F(classes=("eosinophil",)))["file"]) == ["e.png", "bad.png"]
    assert list(batching.filter_frame(frame, F(classes=("eosinophil",), include_errors=False))["file"]) == ["e.png"]
    assert list(batching.filter_frame(frame, F(flagged_only=True))["file"]) == ["l.png", "n.png"]
    assert list(batching.filter_frame(frame, F(confidence=(0.8, 1.0)))["file"]) == ["e.png", "m.png", "bad.png"]
    assert batching.filter_frame(frame, F(classes=()))["file"].tolist() == ["bad.png"]


def test_summary_is_the_differential():
    s = batching.summarise(_frame(), CLASSES)
    assert (s.n_images, s.n_classified, s.n_flagged, s.n_errors) == (5, 4, 2, 1)
    d = s.differential.set_index("class")
    assert d["count"].to_dict() == {"eosinophil": 1, "lymphocyte": 1, "monocyte": 1, "neutrophil": 1}
    assert d["percent"].sum() == pytest.approx(100.0)


def test_summary_of_errors_only():
    clf, cache = FakeClassifier(), batching.ResultCache()
    s = batching.summarise(run([("bad.png", b"BAD")], clf, cache), CLASSES)
    assert (s.n_classified, s.n_errors) == (0, 1) and (s.differential["percent"] == 0).all()


def test_csv_report_columns_and_injection():
    clf, cache = FakeClassifier(), batching.ResultCache()
    frame = run([("=HYPERLINK(1).png", bytes([9])), ("ok.png", bytes([30]))], clf, cache)
    text = batching.csv_report(frame, CLASSES, 0.5, "fake@1")
    out = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert list(out.columns) == [
        "file",
        "predicted_class",
        "confidence",
        *[f"p_{c}" for c in CLASSES],
        "flagged",
        "error",
        "reviewed_class",
        "reviewer",
        "reviewed_at",
        "final_class",
        "unfamiliar",
        "flag_reason",
        "unfamiliarity",
        "threshold",
        "model_version",
    ]
    assert out["final_class"].tolist() == out["predicted_class"].tolist() and (out["reviewed_class"] == "").all()
    assert out.loc[0, "file"] == "'=HYPERLINK(1).png"
    assert (out["model_version"] == "fake@1").all() and (out["threshold"] == 0.5).all()


def test_cache_is_bounded():
    cache = batching.ResultCache(max_entries=2)
    for i in range(3):
        cache.put((str(i), "v"), Prediction(str(i)))
    assert len(cache) == 2 and ("0", "v") not in cache and ("2", "v") in cache


def test_batch_memoises_the_plan():
    b = batching.Batch()
    assert not b
    b.set_uploaded([("a.png", b"x")])
    first = b.entries()
    assert b.entries() is first
    b.clear()
    assert not b and b.entries() == []


def test_a_new_upload_or_the_samples_replace_the_batch_never_mix():
    b = batching.Batch()
    b.set_samples([(f"s{k}.png", bytes([k])) for k in range(32)])
    first_id = b.id
    assert b.kind == "samples" and "32 sample images" in b.describe()
    b.set_uploaded([(f"u{k}.png", bytes([100 + k])) for k in range(12)])
    assert [e.name for e in b.entries()] == [f"u{k}.png" for k in range(12)]
    assert b.samples == [] and len(b.uploaded) == 12 and b.id != first_id
    assert "your upload: 12 files" in b.describe()
    b.set_samples([("s.png", b"y")])
    assert [e.name for e in b.entries()] == ["s.png"] and b.uploaded == []


def test_unreadable_zip_member_is_an_error_row():
    from hematovision.imaging.sources import ImageInput

    def boom():
        raise ValueError("file too large after decompression")

    entries = batching.plan([ImageInput("z.zip/x.png", boom), ImageInput("y.png", error="nested archive")])
    assert [e.error for e in entries] == [
        "cannot read (ValueError: file too large after decompression)",
        "nested archive",
    ]


def test_table_thumbnail_is_the_framed_cell_the_network_saw():
    from conftest import image_bytes
    from hematovision.imaging import DEFAULT_LIMITS, decode_image, framing, thumbnail
    from hematovision.imaging.sources import from_bytes
    from hematovision.serving import classifier

    data = image_bytes("PNG", size=(320, 240), seed=5)
    prep = classifier.prepare(from_bytes("f.png", data), 96, "cell", DEFAULT_LIMITS, True)
    framed = framing.model_input(decode_image(data).rgb, 96, "cell")
    side = classifier.TABLE_THUMB_SIDE
    assert prep.thumb.shape == (side, side, 3)  # square, like the network's input
    assert np.array_equal(prep.thumb, thumbnail(framed, side))
    uri = batching.thumbnail_uri(prep.thumb)
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 6000  # small: every rerun sends the column

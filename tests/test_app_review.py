"""The review flow through Streamlit's AppTest: classify, review flagged images, see decisions come back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import image_bytes
from hematovision.review import store as review
from hematovision.review.store import ReviewStore

pytestmark = pytest.mark.filterwarnings("ignore")
HOME = str(Path(__file__).resolve().parent.parent / "Home.py")
BATCH = [
    ("cell_a.png", image_bytes("PNG", seed=1), "image/png"),
    ("cell_b.jpg", image_bytes("JPEG", seed=2), "image/jpeg"),
    ("cell_c.png", image_bytes("PNG", seed=3), "image/png"),
]


@pytest.fixture
def env(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setenv("HEMATOVISION_MODEL", str(tiny_model_dir))
    monkeypatch.setenv(review.DB_ENV, str(tmp_path / "reviews.sqlite3"))
    return tmp_path / "reviews.sqlite3"


def _run(at: AppTest, threshold: float = 1.0) -> AppTest:
    at.session_state["threshold"] = threshold  # AppTest shows no sidebar after switch_page: set the slider's key
    at.run()
    assert not at.exception, at.exception
    return at


def _page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    return _run(at)


def _progress(at: AppTest) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def _classified(at: AppTest) -> pd.DataFrame:
    return next(
        d.value for d in at.dataframe if "predicted_class" in d.value.columns and "final_class" in d.value.columns
    )


def test_review_flow_and_decisions_back_on_classify(env):
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    _page(at, "pages/review.py")
    assert any("Nothing to review yet" in i.value for i in at.info)

    _page(at, "pages/classify.py")
    at.file_uploader[0].set_value(BATCH)
    _run(at)  # threshold 1.0: all three flagged, so all three queued
    predicted = dict(zip(_classified(at)["file"], _classified(at)["predicted_class"]))

    _page(at, "pages/review.py")
    assert "0 of 3 reviewed" in _progress(at)
    at.text_input(key="hv_reviewer").input("ann")
    first = at.session_state["hv_review_current"]
    item = next(i for i in ReviewStore(env).items() if i.key == first)
    at.button(key=f"hv_decide_{item.predicted_class}").click()
    _run(at)
    assert "1 of 3 reviewed" in _progress(at)
    assert at.session_state["hv_review_current"] != first  # moved on to the next unreviewed image

    second = next(i for i in ReviewStore(env).items() if i.key == at.session_state["hv_review_current"])
    other = next(c for c in second.classes if c != second.predicted_class)
    at.text_input(key="hv_review_note").input("granules look wrong")
    at.button(key=f"hv_decide_{other}").click()
    _run(at)
    at.button(key="hv_decide_unusable").click()
    _run(at)
    assert "3 of 3 reviewed" in _progress(at)

    items = {i.file: i for i in ReviewStore(env).items()}
    assert {i.status for i in items.values()} == {"confirmed", "reclassified", "unusable"}
    changed = items[second.file]
    assert (
        changed.final_class == other
        and changed.decision.reviewer == "ann"
        and changed.decision.note == "granules look wrong"
    )
    assert at.text_input(key="hv_review_note").value == ""  # the note does not stick to the next image

    # filters
    at.selectbox(key="hv_review_status").set_value("Reclassified")
    _run(at)
    assert "**1 of 1** shown" in " ".join(m.value for m in at.markdown) and second.file in " ".join(
        m.value for m in at.markdown
    )
    at.multiselect(key="hv_review_classes").set_value(
        ["eosinophil"] if other != "eosinophil" and second.predicted_class != "eosinophil" else ["lymphocyte"]
    )
    _run(at)
    assert any("No item matches" in i.value for i in at.info)
    btn = next(b for b in at.get("download_button") if "all reviews" in b.proto.label)
    assert "CSV, 3 decisions" in btn.proto.label

    # back on Classify: review columns, final classes in the differential
    _page(at, "pages/classify.py")
    frame = _classified(at).set_index("file")
    assert frame.loc[second.file, "final_class"] == other and frame.loc[second.file, "reviewer"] == "ann"
    unusable = next(f for f, i in items.items() if i.status == "unusable")
    assert frame.loc[unusable, "final_class"] == review.UNUSABLE
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reviewed"] == "3"
    diff = next(d.value for d in at.dataframe if "percent" in d.value.columns).set_index("class")["count"]
    assert int(diff.sum()) == 2  # the unusable image is out of the differential
    assert predicted  # (for the reader: the predictions came from the tiny model)


def test_detail_view_review_and_gradcam_then_a_new_session_sees_the_queue(env):
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    _page(at, "pages/classify.py")
    at.file_uploader[0].set_value(BATCH[:2])
    _run(at, threshold=0.0)  # nothing flagged: an unflagged image can still be reviewed from the detail view
    assert ReviewStore(env).items() == []
    assert [len(i.value) for i in at.get("image")] == [1]
    at.toggle(key="hv_detail_gradcam").set_value(True)
    _run(at, threshold=0.0)
    [imgs] = at.get("image")
    assert len(imgs.value) == 2 and imgs.captions[1].startswith("Grad-CAM for")  # the image and its overlay

    sha = _classified(at).loc[0, "sha256"]
    box = next(s for s in at.selectbox if s.key.startswith("hv_detail_class_"))
    box.set_value(review.UNUSABLE)
    at.text_input(key="hv_detail_reviewer").input("bob")
    next(b for b in at.button if b.label == "Save review").click()
    _run(at, threshold=0.0)
    [item] = ReviewStore(env).items()
    assert item.sha256 == sha and not item.flagged and item.status == "unusable" and item.decision.reviewer == "bob"
    assert _classified(at).loc[0, "final_class"] == review.UNUSABLE

    # a new session (a reload, or a restart): the queue and decision come from the database, image from the thumbnail
    fresh = AppTest.from_file(HOME, default_timeout=60)
    fresh.run()
    _page(fresh, "pages/review.py")
    assert "1 of 1 reviewed" in _progress(fresh)
    captions = [c for i in fresh.get("image") for c in i.captions]
    # Grad-CAM on request only
    assert "Image (stored thumbnail)" in captions and not any(c.startswith("Grad-CAM for") for c in captions)
    fresh.toggle(key="hv_review_gradcam").set_value(True)
    _run(fresh, threshold=0.0)
    captions = [c for i in fresh.get("image") for c in i.captions]
    assert any(c.startswith("Grad-CAM for") for c in captions)
    assert any("Reviewed: **unusable**" in s.value for s in fresh.success)


def test_pending_follows_the_threshold_decisions_stay_and_a_batch_can_be_cleared(env):
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    _page(at, "pages/classify.py")
    at.file_uploader[0].set_value(BATCH)
    _run(at, threshold=1.0)  # a moment at 1.0: all three flagged and queued
    _page(at, "pages/review.py")
    assert "0 of 3 reviewed" in _progress(at)
    # Fixed places and keyboard keys, whatever the prediction.
    keys = [b.key for b in at.button if b.key and b.key.startswith("hv_decide_")]
    assert keys == ["hv_decide_confirm", "hv_decide_unusable", "hv_decide_eosinophil", "hv_decide_lymphocyte",
                    "hv_decide_monocyte", "hv_decide_neutrophil"]
    assert [at.button(key=k).proto.shortcut.upper() for k in keys] == ["Y", "U", "1", "2", "3", "4"]
    at.button(key="hv_decide_confirm").click()
    _run(at, threshold=1.0)
    assert "1 of 3 reviewed" in _progress(at)
    # Back to a threshold that flags nothing: the two unreviewed leave the list, the decision stays.
    _run(at, threshold=0.0)
    assert "1 of 1 reviewed" in _progress(at)
    _run(at, threshold=1.0)
    assert "1 of 3 reviewed" in _progress(at)
    # Clear the batch's pending items: the decided one stays, with its decision.
    batch = next(o for o in at.selectbox(key="hv_review_batch").options if o.startswith("upload"))
    at.selectbox(key="hv_review_batch").set_value(batch)
    _run(at, threshold=1.0)
    at.button(key="hv_review_clear").click()
    _run(at, threshold=1.0)
    assert "1 of 1 reviewed" in _progress(at)
    assert len(ReviewStore(env).history()) == 1

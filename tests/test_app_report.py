"""The report button and the cell gallery on Classify and Review, through Streamlit's AppTest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import CLASSES, image_bytes
from hematovision.app import gallery as gal
from hematovision.app import report_views as report_ui
from hematovision.reports.content import ModelInfo
from hematovision.review import ReviewStore
from hematovision.review import store as review

pytestmark = pytest.mark.filterwarnings("ignore")
HOME = str(Path(__file__).resolve().parent.parent / "Home.py")
BATCH = [
    ("cell_a.png", image_bytes("PNG", seed=1), "image/png"),
    ("broken.jpg", b"not a jpeg", "image/jpeg"),
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


def _classified(env) -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    at.switch_page("pages/classify.py")
    _run(at)
    at.file_uploader[0].set_value(BATCH)
    return _run(at)


def _tile_captions(at: AppTest) -> list[str]:
    return [c for img in at.get("image") for c in [img.proto.imgs[0].caption] if c.startswith("#")]


def _buttons(at: AppTest, label: str):
    return [b for b in at.button if b.label.startswith(label)]


def test_classify_has_the_report_button_with_sample_and_operator(env):
    at = _classified(env)
    downloads = {b.proto.label: b.proto for b in at.get("download_button")}
    assert "Download report (PDF)" in downloads
    at.text_input(key="hv_report_sample").set_value("S-77")
    at.text_input(key="hv_report_operator").set_value("Lab tech")
    _run(at)
    assert at.session_state["hv_report_sample"] == "S-77"
    # what the button serves: the batch's frame through the one content function
    store = ReviewStore(env)
    assert len(store.items()) == 3  # every classified cell is flagged at threshold 1.0 and queued
    assert report_ui.report_filename("S-77 / ward 3") == "hematovision_report_S-77_ward_3.pdf"


def test_classify_gallery_groups_cells_and_opens_the_detail(env):
    at = _classified(env)
    assert not _buttons(at, "Open")  # the gallery is off until asked for
    at.toggle(key="hv_gallery_view").set_value(True)
    _run(at)
    opens = _buttons(at, "Open")
    assert len(opens) == 3  # three classified cells; the broken file has no tile
    captions = _tile_captions(at)
    assert len(captions) == 3 and all("flagged" in c for c in captions)
    titles = [m.value for m in at.markdown if "cell" in m.value and "·" in m.value]
    assert sum(int(t.split("·")[1].split()[0]) for t in titles) == 3
    # open the last tile: the detail view shows that row
    last = opens[-1]
    row = int(last.key.rsplit("_", 1)[1])
    last.click()
    _run(at)
    assert row in (0, 2, 3)  # a classified row of BATCH (1 is broken); every row is shown, so position = index
    sha = hashlib.sha256(BATCH[row][1]).hexdigest()  # the detail view is keyed by the image, not its row position
    assert at.session_state["hv_detail"] == sha
    assert at.selectbox(key="hv_detail").value == sha
    assert last.label == f"Open #{row + 1}" and any(c.startswith(f"#{row + 1} ") for c in _tile_captions(at))


def test_review_gallery_opens_the_item(env):
    at = _classified(env)
    at.switch_page("pages/review.py")
    _run(at)
    at.toggle(key="hv_review_gallery_view").set_value(True)
    _run(at)
    opens = _buttons(at, "Open")
    assert len(opens) == 3
    store = ReviewStore(env)
    items = store.items()
    target = opens[-1]
    target.click()
    _run(at)
    position = int(target.key.rsplit("_", 1)[1])
    assert at.session_state["hv_review_current"] == items[position].key  # the queue shows every item, in store order
    # a decision shows in the gallery: reclassify the current item, the tile says so
    current = at.session_state["hv_review_current"]
    it = next(i for i in items if i.key == current)
    other = next(c for c in CLASSES if c != it.predicted_class)
    store.decide(it.sha256, it.model_version, other, "rev")
    _run(at)
    captions = _tile_captions(at)
    assert sum(f"was {it.predicted_class}" in c for c in captions) == 1


def test_gallery_tiles_are_framed_by_status():
    import numpy as np

    from hematovision.reports.content import GalleryCell

    img = np.full((128, 128, 3), 100, np.uint8)

    def cell(**kw):
        base = dict(
            number=1,
            file="a",
            label="a",
            predicted_class="monocyte",
            final_class="monocyte",
            confidence=0.5,
            flagged=False,
            action="",
            reviewer="",
            image=img,
            image_source="image file",
        )
        return GalleryCell(**{**base, **kw})

    assert tuple(gal._framed(cell(flagged=True))[0, 0]) == gal.FLAGGED_RGB
    assert tuple(gal._framed(cell(flagged=True, action="reclassified"))[0, 0]) == gal.CHANGED_RGB
    assert tuple(gal._framed(cell(action="confirmed"))[0, 0]) == gal.CONFIRMED_RGB
    assert tuple(gal._framed(cell(flagged=True, action="confirmed"))[0, 0]) == gal.CONFIRMED_RGB  # reviewed wins
    assert tuple(gal._framed(cell())[0, 0]) == (255, 255, 255)
    missing = gal._framed(cell(image=None))
    assert missing.shape == (128 + 2 * gal.BORDER,) * 2 + (3,)
    assert "image not available" in gal._caption(cell(image=None))
    assert gal.review_gallery([], lambda it: None, ModelInfo("x")) == []

"""Classify page, Whole fields mode, through Streamlit's AppTest: boxes, a row per cell, per-cell review."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from hematovision.app import fields as view
from hematovision.detection.cells import FieldResult, classify_fields
from hematovision.detection.synthetic import WhiteCell, make_field
from hematovision.imaging.sources import from_bytes
from hematovision.review.store import ReviewStore
from hematovision.serving.classifier import Classifier

pytestmark = pytest.mark.filterwarnings("ignore")
HOME = str(Path(__file__).resolve().parent.parent / "Home.py")
CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
THREE = (WhiteCell(150, 140, 60, 3), WhiteCell(460, 300, 55, 1), WhiteCell(300, 380, 65, 4))


def _png(rgb) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture
def env(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setenv("HEMATOVISION_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HEMATOVISION_REVIEW_DB", str(tmp_path / "reviews.sqlite3"))
    return tmp_path


def _cells_table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "cell" in d.value.columns)


def test_whole_fields_mode_boxes_rows_review(env):
    at = AppTest.from_file(HOME, default_timeout=90)
    at.run()
    at.switch_page("pages/classify.py").run()
    assert not at.exception, at.exception
    at.radio(key="hv_mode").set_value("Whole fields").run()
    assert not at.exception, at.exception
    files = [
        ("three.png", _png(make_field(cells=THREE, seed=1)), "image/png"),
        ("empty.png", _png(make_field(cells=(), seed=3)), "image/png"),
        ("broken.jpg", b"not an image", "image/jpeg"),
    ]
    at.file_uploader(key="hv_fields_uploader").set_value(files).run()
    assert not at.exception, at.exception

    table = _cells_table(at)
    assert list(table["file"]) == ["three.png"] * 3 + ["empty.png", "broken.jpg"]
    assert list(table["cell"].dropna()) == [1, 2, 3]
    assert table["thumbnail"].iloc[:3].str.startswith("data:image/jpeg").all()  # batch thumbnails are JPEG
    assert "no white cell" in table["note"].iloc[3] and table["error"].iloc[4]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["White cells"] == "3" and metrics["Fields"] == "3" and metrics["Errors"] == "1"
    assert metrics["Empty fields"] == "1"
    diff = next(d.value for d in at.dataframe if "percent" in d.value.columns)
    assert int(diff["count"].sum()) == 3  # the differential counts cells
    assert at.get("download_button")  # per-cell CSV offered

    # The field is drawn with its boxes; pick cell 2 and review it: the decision is keyed by field hash + box.
    assert len(at.image) >= 1
    cell_pick = next(s for s in at.selectbox if s.label == "Cell")
    cell_pick.set_value(2).run()
    assert not at.exception, at.exception
    form_select = next(s for s in at.selectbox if s.label == "Reviewed class")
    form_select.set_value("monocyte")
    next(t for t in at.text_input if t.label == "Reviewer").set_value("dr test")
    at.button[[b.label for b in at.button].index("Save review")].click().run()
    assert not at.exception, at.exception
    store = ReviewStore(env / "reviews.sqlite3")
    current = store.current()
    assert len(current) == 1
    (key, _version), decision = next(iter(current.items()))
    assert "#" in key and decision.reviewed_class == "monocyte"
    table = _cells_table(at)
    assert table.loc[table["sha256"] == key, "final_class"].item() == "monocyte"
    # The reviewed cell is an item of the review queue, shown by the Review page with its crop.
    (item,) = store.items()
    assert item.sha256 == key and item.file.endswith("#cell 2") and store.thumbnail(key, item.model_version)
    at.switch_page("pages/review.py").run()
    assert not at.exception, at.exception


def test_draw_cells_colours_boxes_by_class(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    rgb = make_field(cells=THREE, seed=1)
    (res,) = list(classify_fields(clf, [from_bytes("f.png", _png(rgb))], 0.5))
    out = view.draw_cells(rgb, res, CLASSES)
    assert out.shape == rgb.shape and not np.array_equal(out, rgb)
    for c in res.cells:
        edge = out[(c.box.y0 + c.box.y1) // 2, c.box.x0]
        assert tuple(int(v) for v in edge) == view.class_colour(c.prediction.predicted_class, CLASSES)
    empty = view.draw_cells(rgb, FieldResult("e.png"), CLASSES)
    assert np.array_equal(empty, rgb)


def test_mode_and_fields_survive_leaving_the_page(env):
    at = AppTest.from_file(HOME, default_timeout=90)
    at.run()
    at.switch_page("pages/classify.py").run()
    at.radio(key="hv_mode").set_value("Whole fields").run()
    at.file_uploader(key="hv_fields_uploader").set_value(
        [("three.png", _png(make_field(cells=THREE, seed=1)), "image/png")]
    ).run()
    assert list(_cells_table(at)["cell"]) == [1, 2, 3]
    at.switch_page("pages/evaluation.py").run()
    at.switch_page("pages/classify.py").run()
    assert not at.exception, at.exception
    assert at.radio(key="hv_mode").value == "Whole fields"
    assert list(_cells_table(at)["cell"]) == [1, 2, 3]  # the session's fields, not re-uploaded

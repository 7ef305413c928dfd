"""The evaluation page in Streamlit's AppTest: the charts and figures carry the report's numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_eval_views import labeled_zip, make_evaluation

from conftest import make_tiny_model_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def eval_model_dir(tmp_path_factory):
    d = make_tiny_model_dir(tmp_path_factory.mktemp("eval_model"))
    report = make_evaluation(d)
    return d, report


@pytest.fixture
def app(eval_model_dir, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    d, report = eval_model_dir
    monkeypatch.setenv("HEMATOVISION_MODEL", str(d))
    monkeypatch.setenv("HEMATOVISION_DATA", str(tmp_path / "no-data"))
    at = AppTest.from_file(str(REPO / "Home.py"), default_timeout=60)
    at.switch_page("pages/evaluation.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at, report


def chart(at, key):
    return json.loads(at.get("plotly_chart")[_chart_index(at, key)].proto.spec)


def _chart_index(at, key):
    charts = at.get("plotly_chart")
    for i, c in enumerate(charts):
        if key in c.proto.id:
            return i
    raise AssertionError(f"no chart with key {key}; ids: {[c.proto.id for c in charts]}")


def metric(at, label):
    return next(m for m in at.metric if m.label == label).value


def test_page_shows_kaggle_test_numbers(app):
    at, report = app
    s = report["sets"]["kaggle_test"]
    assert at.selectbox(key="eval_set").value == "kaggle_test"
    assert metric(at, "Accuracy") == f"{s['accuracy']:.1%}"
    assert metric(at, "Macro-F1") == f"{s['macro_f1']:.3f}"
    assert metric(at, "Images") == f"{s['n_images']:,}"
    assert metric(at, "ECE after calibration") == f"{s['ece_after_calibration']:.3f}"
    assert metric(at, "Per-cell accuracy") == f"{s['per_cell']['accuracy']:.1%}"
    assert any(f"only {s['per_cell']['n_cells']} original cells" in c.value for c in at.caption)
    cm = chart(at, "eval_cm")
    assert cm["data"][0]["type"] == "heatmap" and cm["data"][0]["z"] == s["confusion_matrix"]
    roc = chart(at, "eval_roc")
    assert [t["y"] for t in roc["data"][:4]] == [s["roc"][c]["tpr"] for c in report["classes"]]
    rel = chart(at, "eval_rel")
    assert rel["data"][2]["y"] == [b["accuracy"] for b in s["reliability_after"] if b["count"]]
    table = at.dataframe[0].value
    assert list(table["support"]) == [s["per_class"][c]["support"] for c in report["classes"]]
    # The test images are absent here: the page says so and lists the errors instead.
    assert any("not on this machine" in i.value for i in at.info)


def test_row_normalised_toggle(app):
    at, report = app
    at.toggle(key="eval_norm").set_value(True).run()
    z = chart(at, "eval_cm")["data"][0]["z"]
    s = report["sets"]["kaggle_test"]
    for k, c in enumerate(report["classes"]):
        assert z[k][k] == pytest.approx(s["per_class"][c]["recall"])


def test_switching_set_changes_figures(app):
    at, report = app
    at.selectbox(key="eval_set").set_value("pbc_test").run()
    s = report["sets"]["pbc_test"]
    assert metric(at, "Accuracy") == f"{s['accuracy']:.1%}"
    assert chart(at, "eval_cm")["data"][0]["z"] == s["confusion_matrix"]
    assert not [m for m in at.metric if m.label == "Per-cell accuracy"]


def test_threshold_by_target_accuracy_sets_shared_threshold(app):
    from hematovision.stats.threshold_advice import advise

    at, report = app
    s = report["sets"]["pbc_test"]
    at.selectbox(key="eval_set").set_value("pbc_test").run()
    pts = s["risk_coverage"]
    targets = (0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6)
    target = next((t for t in targets if advise(pts, s["n_images"], t).threshold is not None), None)
    if target is None:  # the generated set supports no threshold: the page says so, offers no button
        assert any("too small" in w.value or "No threshold" in w.value for w in at.warning)
        assert not [b for b in at.button if b.key == "eval_set_threshold"]
        return
    want = advise(pts, s["n_images"], target).threshold
    at.number_input(key="eval_target").set_value(target).run()
    at.button(key="eval_set_threshold").click().run()
    assert not at.exception
    assert at.session_state["threshold"] == pytest.approx(want)
    rc = chart(at, "eval_rc")
    cur = [p for p in pts if p["threshold"] <= want + 1e-9][-1]
    assert rc["data"][1]["x"] == [cur["flagged_share"]] and rc["data"][1]["y"] == [cur["accuracy_accepted"]]
    assert rc["layout"]["yaxis"]["range"][1] <= 1.0


def test_a_set_too_small_gets_no_threshold_and_no_button(app):
    at, report = app
    at.selectbox(key="eval_set").set_value("kaggle_test").run()
    assert any("too small" in w.value for w in at.warning) or any("No threshold" in w.value for w in at.warning)
    assert not [b for b in at.button if b.key == "eval_set_threshold"]


def test_upload_labeled_zip_adds_a_set(app):
    at, report = app
    at.file_uploader(key="eval_zip").upload("mine.zip", labeled_zip(), "application/zip").run()
    at.button(key="eval_zip_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="eval_set").value == "user_1"
    user = at.session_state["eval_user_sets"]["user_1"]["report"]
    assert user["n_images"] == 8 and metric(at, "Images") == "8"
    assert chart(at, "eval_cm")["data"][0]["z"] == user["confusion_matrix"]
    skipped = {s[0] for s in user["skipped"]}
    assert {"basophil/x.png", "lymphocyte/broken.png"} <= skipped
    assert len(at.get("download_button")) == 2
    # The shipped sets are still there.
    assert set(at.selectbox(key="eval_set").options) >= {"Kaggle TEST", "PBC test"}


def test_upload_images_and_csv_lists_unknown_labels(app):
    from conftest import image_bytes

    at, _ = app
    imgs = [(f"cell{i}.png", image_bytes(seed=i), "image/png") for i in range(4)]
    csv = b"file,label\ncell0.png,lymphocyte\ncell1.png,Neutrophils\ncell2.png,basophil\n"
    at.file_uploader(key="eval_imgs").set_value(imgs).run()
    at.file_uploader(key="eval_csv").upload("labels.csv", csv, "text/csv").run()
    at.button(key="eval_csv_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    user = at.session_state["eval_user_sets"]["user_1"]["report"]
    assert user["n_images"] == 2
    assert dict(user["skipped"]) == {"cell2.png": "unknown class 'basophil'", "cell3.png": "no label in the CSV"}
    assert metric(at, "Images") == "2"


def test_gallery_shows_images_from_the_data_root(eval_model_dir, monkeypatch, tmp_path):
    import pandas as pd
    from streamlit.testing.v1 import AppTest

    from conftest import image_bytes
    from hematovision.app import eval_views as ev

    d, _ = eval_model_dir
    wrong = ev.misclassified(pd.read_csv(d / "test_predictions.csv"), "kaggle_test")
    for f in wrong["file"][:3]:  # only some present: the others say so
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(image_bytes())
    monkeypatch.setenv("HEMATOVISION_MODEL", str(d))
    monkeypatch.setenv("HEMATOVISION_DATA", str(tmp_path))
    at = AppTest.from_file(str(REPO / "Home.py"), default_timeout=60)
    at.switch_page("pages/evaluation.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.image) == 3 and all("predicted" in im.captions[0] for im in at.image)
    assert sum("image absent" in t.value for t in at.text) == len(wrong) - 3

"""Classify page through Streamlit's AppTest (its file_uploader.set_value drives real uploads)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import image_bytes
from hematovision.serving.classifier import Classifier

pytestmark = pytest.mark.filterwarnings("ignore")
HOME = str(Path(__file__).resolve().parent.parent / "Home.py")


@pytest.fixture
def calls(monkeypatch, tiny_model_dir):
    """Count images actually sent to the model, whatever the page caches."""
    monkeypatch.setenv("HEMATOVISION_MODEL", str(tiny_model_dir))
    seen: list[str] = []
    real = Classifier.classify

    def counting(self, inputs, *args, **kwargs):
        inputs = list(inputs)
        seen.extend(i.name for i in inputs)
        yield from real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(Classifier, "classify", counting)
    return seen


def _classify_page() -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    at.switch_page("pages/classify.py").run()
    assert not at.exception, at.exception
    return at


def _results(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "predicted_class" in d.value.columns)


def _upload(at: AppTest, files) -> None:
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception


BATCH = [
    ("cell_a.png", image_bytes("PNG", seed=1), "image/png"),
    ("broken.jpg", b"this is not a jpeg", "image/jpeg"),
    ("cell_b.jpg", image_bytes("JPEG", seed=2), "image/jpeg"),
    ("cell_c.bmp", image_bytes("BMP", seed=3), "image/bmp"),
]


def test_broken_file_gives_one_error_row_and_threshold_does_not_rerun_inference(calls):
    at = _classify_page()
    assert at.file_uploader[0].accept_multiple_files
    assert {"png", "jpg", "jpeg", "bmp", "tif", "tiff", "zip"} <= {
        t.lstrip(".") for t in at.file_uploader[0].allowed_type
    }
    _upload(at, BATCH)
    frame = _results(at)
    assert list(frame["file"]) == ["cell_a.png", "broken.jpg", "cell_b.jpg", "cell_c.bmp"]
    errors = frame[frame["error"] != ""]
    assert list(errors["file"]) == ["broken.jpg"]
    assert frame.loc[[0, 2, 3], "predicted_class"].isin(["eosinophil", "lymphocyte", "monocyte", "neutrophil"]).all()
    n_model_calls = len(calls)
    assert n_model_calls == 4  # each file once (the broken one fails at decode)
    assert at.session_state["hv_cache"].inferred == 4
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "4" and metrics["Errors"] == "1" and metrics["Classified"] == "3"

    # raise the threshold above every confidence: all classified rows flagged, nothing re-classified
    # AppTest (1.67) does not expose the sidebar after switch_page, so set the slider's key, as the widget does
    at.session_state["threshold"] = 1.0
    at.run()
    assert "threshold 1.000" in " ".join(c.value for c in at.caption)
    frame = _results(at)
    assert frame.loc[[0, 2, 3], "flagged"].all() and not frame.loc[1, "flagged"]
    assert len(calls) == n_model_calls
    # filters and the page change do not re-classify either
    at.session_state["threshold"] = 1.0  # see above: AppTest would otherwise send no slider state
    at.checkbox(key="hv_flagged_only").check().run()
    assert list(_results(at)["file"]) == ["cell_a.png", "cell_b.jpg", "cell_c.bmp"]
    at.switch_page("pages/overview.py").run()
    at.session_state["threshold"] = 1.0
    at.switch_page("pages/classify.py").run()
    assert not at.exception
    assert len(_results(at)) in (3, 4)  # the batch survives leaving the page (AppTest resets the filter widgets)
    assert len(calls) == n_model_calls
    # uploading the same bytes again, plus one new image, classifies only the new one
    _upload(at, BATCH + [("new.tif", image_bytes("TIFF", seed=9), "image/tiff")])
    assert calls[n_model_calls:] == ["new.tif"]


def test_download_csv_has_cli_columns_threshold_and_version(calls):
    at = _classify_page()
    _upload(at, BATCH)
    at.radio(key="hv_download_scope").set_value("All rows").run()
    btn = at.get("download_button")[0]
    assert "4 rows" in btn.proto.label
    # the CSV itself comes from batching.csv_report; check what the page would serve
    from hematovision.app import batching

    frame = _results(at)
    text = batching.csv_report(
        frame.assign(error=frame["error"]), ["eosinophil", "lymphocyte", "monocyte", "neutrophil"], 0.3, "v"
    )
    out = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert out.columns[-2:].tolist() == ["threshold", "model_version"] and len(out) == 4


def test_zip_upload_and_detail_view(calls):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x/one.png", image_bytes("PNG", seed=4))
        zf.writestr("x/empty.png", b"")
    at = _classify_page()
    _upload(at, [("cells.zip", buf.getvalue(), "application/zip")])
    frame = _results(at)
    assert list(frame["file"]) == ["cells.zip/x/one.png", "cells.zip/x/empty.png"]
    assert frame.loc[1, "error"] == "empty file (0 bytes)"
    assert at.selectbox(key="hv_detail").options == ["cells.zip/x/one.png"]
    assert len(at.get("plotly_chart")) == 2  # distribution + probabilities


def test_missing_model_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_MODEL", str(tmp_path / "none"))
    at = _classify_page()
    assert any("could not be loaded" in e.value for e in at.error)
    assert not at.file_uploader


def test_sample_images_button(calls, monkeypatch, tmp_path):
    from hematovision.app import samples

    at = _classify_page()
    if all((samples.data_root() / s.relpath).is_file() for s in samples.read_manifest()):
        at.button[0].click().run()
        frame = _results(at)
        assert len(frame) == 32 and (frame["error"] == "").all()
        assert len(calls) == 32
    monkeypatch.setenv("HEMATOVISION_DATA", str(tmp_path / "no-data"))
    at = _classify_page()
    at.button[0].click().run()
    assert any("32 of 32 sample images are missing" in w.value and "HEMATOVISION_DATA" in w.value for w in at.warning)


def test_samples_then_an_upload_is_a_new_batch_of_just_the_upload(calls):
    from hematovision.app import samples

    if not all((samples.data_root() / s.relpath).is_file() for s in samples.read_manifest()):
        pytest.skip("sample images not on this machine")
    at = _classify_page()
    at.button(key="hv_load_samples").click().run()
    assert len(_results(at)) == 32
    assert any("32 sample images" in i.value for i in at.info)
    twelve = [(f"mine_{k:02d}.png", image_bytes("PNG", seed=100 + k), "image/png") for k in range(12)]
    _upload(at, twelve)
    frame = _results(at)
    assert len(frame) == 12 and list(frame["file"]) == [f"mine_{k:02d}.png" for k in range(12)]
    assert {m.label: m.value for m in at.metric}["Images"] == "12"
    assert any("your upload: 12 files" in i.value for i in at.info)
    diff = next(d.value for d in at.dataframe if "percent" in d.value.columns)
    assert int(diff["count"].sum()) == 12  # the differential holds the upload only
    # Loading the samples again replaces the upload (and empties the uploader), never adds to it.
    at.button(key="hv_load_samples").click().run()
    assert len(_results(at)) == 32 and not at.file_uploader[0].value


def test_detail_view_follows_the_image_not_the_row(calls):
    from hematovision.imaging import decode_image

    at = _classify_page()
    _upload(at, BATCH)
    frame = _results(at)
    target = frame.loc[3]  # cell_c.bmp
    box = at.selectbox(key="hv_detail")
    box.set_value(target["sha256"]).run()
    assert at.selectbox(key="hv_detail").value == target["sha256"]
    # Rows move: the first image leaves the view (class filter), the threshold changes; the detail stays on cell_c.
    first_class = frame.loc[0, "predicted_class"]
    keep = [c for c in ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
            if c != first_class or c == target["predicted_class"]]
    at.session_state["threshold"] = 0.9
    at.session_state["hv_filter_classes"] = keep
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="hv_detail").value == target["sha256"]
    [img] = at.get("image")
    assert img.captions == ["cell_c.bmp"]
    chart = next(c for c in at.get("plotly_chart") if "Predicted:" in c.proto.spec)
    assert f"Predicted: {target['predicted_class']} ({target['confidence']:.3f})" in chart.proto.spec
    assert decode_image(BATCH[3][1]).rgb.shape[:2] == (48, 64)


def test_csv_threshold_is_rounded_as_on_screen(monkeypatch, tmp_path, tiny_model_dir):
    import shutil

    from hematovision.app import batching
    from hematovision.modeling import persistence

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    persistence.update_card(model, lambda c: c.__dict__.update(default_threshold=0.948737))
    monkeypatch.setenv("HEMATOVISION_MODEL", str(model))
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    assert at.sidebar.slider(key="threshold").value == pytest.approx(0.949)
    at.switch_page("pages/classify.py").run()
    _upload(at, BATCH)
    caption = next(c.value for c in at.caption if "rows shown" in c.value)
    assert "threshold 0.949 " in caption
    frame = _results(at)
    # The page hands csv_report the threshold it shows; even an unrounded one is written as shown.
    text = batching.csv_report(frame, ["eosinophil", "lymphocyte", "monocyte", "neutrophil"], 0.948737, "v")
    out = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
    assert set(out["threshold"]) == {"0.949"}

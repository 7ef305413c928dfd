"""Home page through Streamlit's AppTest: purpose, disclaimer, model card, links, no model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hematovision.imaging.framing import FRAMING_REVISION

pytestmark = pytest.mark.filterwarnings("ignore")
HOME = str(Path(__file__).resolve().parent.parent / "Home.py")

EVALUATION = {
    "model_version": "tiny",
    "classes": ["eosinophil", "lymphocyte", "monocyte", "neutrophil"],
    "default_threshold": 0.3,
    "sets": {
        "kaggle_test": {
            "name": "Kaggle TEST",
            "n_images": 2487,
            "accuracy": 0.871,
            "accuracy_ci95": [0.857, 0.884],
            "macro_f1": 0.87,
            "ece_before_calibration": 0.081,
            "ece_after_calibration": 0.021,
            "risk_coverage": [],
            "ece_floor": {"median": 0.039, "p95": 0.072, "n_sims": 500},
            "per_cell": {
                "n_cells": 71,
                "correct": 60,
                "accuracy": 0.845,
                "accuracy_ci95": [0.74, 0.91],
                "image_accuracy_ci95_by_cell": [0.71, 0.93],
            },
        },
        "pbc_test": {
            "name": "PBC test",
            "n_images": 1200,
            "accuracy": 0.962,
            "accuracy_ci95": [0.95, 0.97],
            "macro_f1": 0.96,
            "ece_before_calibration": 0.05,
            "ece_after_calibration": 0.012,
            "risk_coverage": [],
        },
    },
}


def _app() -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _text(at: AppTest) -> str:
    parts = (
        [m.value for m in at.markdown]
        + [c.value for c in at.caption]
        + [w.value for w in at.warning]
        + [i.value for i in at.info]
    )
    return "\n".join(str(p) for p in parts)


def test_home_with_evaluation(tmp_path, tiny_model_dir, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "evaluation.json").write_text(json.dumps(EVALUATION))
    monkeypatch.setenv("HEMATOVISION_MODEL", str(model))
    at = _app()
    text = _text(at)
    assert "HematoVision" in at.title[0].value
    assert "not a medical device" in text.lower() and "diagnosis" in text.lower()
    assert "review threshold" in text.lower()
    assert "hematology lab staff, researchers and students" in text  # the README's audience
    readme = (Path(HOME).parent / "README.md").read_text()
    assert "For hematology lab staff, researchers and students." in readme
    # every page is linked, and a three-step start
    links = {p.proto.label: p.proto.page for p in at.get("page_link")}
    assert {"Home": "", "Classify": "classify", "Review": "review", "Model evaluation": "evaluation",
            "Model versions": "models"}.items() <= links.items()
    assert [m.value for m in at.markdown if m.value.startswith("**") and ". " in m.value[:6]] == [
        "**1. Classify**", "**2. Review what is flagged**", "**3. Download the report**"]
    # Kaggle's ECE is lower after temperature scaling here; the note appears only where it is higher
    assert "Why calibration error can be higher" not in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "4" and metrics["Default threshold"] == "0.300"
    table = at.dataframe[0].value
    assert list(table["Test set"]) == ["Kaggle TEST", "PBC test"]
    assert table.loc[0, "Accuracy"] == "87.1%" and table.loc[0, "ECE after calibration"] == "0.021"
    assert table.loc[0, "Per-cell accuracy"] == "84.5%" and table.loc[1, "Per-cell accuracy"] == "–"
    # Copies of a cell: the interval resamples whole cells; one image per cell: Wilson's.
    assert table.loc[0, "95% CI"] == "71.0% – 93.0%" and table.loc[1, "95% CI"] == "95.0% – 97.0%"
    assert table.loc[0, "ECE noise floor"] == "0.039" and table.loc[1, "ECE noise floor"] == "–"
    assert "framed on its white cell" not in text  # the tiny model sees the whole image


def test_home_says_when_the_model_frames_the_cell(tmp_path, tiny_model_dir, monkeypatch):
    from hematovision.modeling import persistence

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    persistence.update_card(model, lambda c: c.__dict__.update(framing="cell", framing_revision=FRAMING_REVISION))
    monkeypatch.setenv("HEMATOVISION_MODEL", str(model))
    assert "framed on its white cell" in _text(_app())


def test_home_without_evaluation(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_MODEL", str(tiny_model_dir))
    at = _app()
    assert "No evaluation has been written" in _text(at)
    assert {m.label for m in at.metric} >= {"Classes", "Default threshold"}


def test_home_without_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMATOVISION_MODEL", str(tmp_path / "nothing-here"))
    at = _app()
    assert "No model found yet" in _text(at)
    assert len(at.get("page_link")) == 8


def test_home_says_why_calibration_error_can_be_worse(tmp_path, tiny_model_dir, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    worse = json.loads(json.dumps(EVALUATION))
    worse["sets"]["kaggle_test"].update(ece_before_calibration=0.062, ece_after_calibration=0.070)
    (model / "evaluation.json").write_text(json.dumps(worse))
    monkeypatch.setenv("HEMATOVISION_MODEL", str(model))
    text = _text(_app())
    want = ("Why calibration error can be higher after temperature scaling "
            "(Kaggle TEST 0.062 → 0.070 (noise floor 0.039))")
    assert want in text

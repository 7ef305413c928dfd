"""``classify --fields`` and ``--summary``, run as users run them, on generated smear fields and a tiny model."""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_cli import run

from conftest import image_bytes
from hematovision.detection import CellBox
from hematovision.detection.cells import NO_CELL_NOTE, CellResult, FieldResult, classify_fields, crop_cell
from hematovision.detection.report import field_columns, fields_frame, summarise_fields
from hematovision.detection.synthetic import WhiteCell, make_field
from hematovision.imaging.framing import model_input
from hematovision.imaging.sources import from_bytes
from hematovision.serving.classifier import Classifier, Prediction

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
THREE = (WhiteCell(150, 140, 60, 3), WhiteCell(460, 300, 55, 1), WhiteCell(300, 380, 65, 4))
EDGE = (WhiteCell(20, 240, 60, 1),)


def _png(rgb) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def field_folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fields")
    (d / "a_three.png").write_bytes(_png(make_field(cells=THREE, seed=1)))
    (d / "b_edge.png").write_bytes(_png(make_field(cells=EDGE, seed=2)))
    (d / "c_empty.png").write_bytes(_png(make_field(cells=(), seed=3)))
    (d / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return d


def test_fields_csv_has_a_row_per_cell_and_a_note_for_an_empty_field(tmp_path, tiny_model_dir, field_folder):
    out, summ = tmp_path / "cells.csv", tmp_path / "s.json"
    r = run(
        "classify",
        str(field_folder),
        "--fields",
        "--out",
        str(out),
        "--summary",
        str(summ),
        "--quiet",
        model=tiny_model_dir,
    )
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == field_columns(CLASSES)
        rows = list(reader)
    for col in (
        "file",
        "predicted_class",
        "confidence",
        "p_neutrophil",
        "flagged",
        "error",
        "threshold",
        "model_version",
        "cell",
        "x0",
        "y0",
        "x1",
        "y1",
        "partial",
        "note",
        "unfamiliar",
        "flag_reason",
    ):
        assert col in rows[0]
    by_file = {}
    for row in rows:
        by_file.setdefault(Path(row["file"]).name, []).append(row)
    assert list(by_file) == [
        "a_three.png",
        "b_edge.png",
        "c_empty.png",
        "d_broken.jpg",
    ]  # every field present, in order
    three = by_file["a_three.png"]
    assert [row["cell"] for row in three] == ["1", "2", "3"]
    assert all(row["predicted_class"] in CLASSES and row["partial"] == "False" for row in three)
    assert all(int(row["x1"]) > int(row["x0"]) >= 0 and int(row["y1"]) > int(row["y0"]) >= 0 for row in three)
    (edge,) = by_file["b_edge.png"]
    assert edge["partial"] == "True" and edge["x0"] == "0" and "partial" in edge["note"]
    (empty,) = by_file["c_empty.png"]
    assert (
        empty["predicted_class"] == "" and empty["cell"] == "" and empty["note"] == NO_CELL_NOTE and not empty["error"]
    )
    (broken,) = by_file["d_broken.jpg"]
    assert broken["error"] and broken["predicted_class"] == ""
    s = json.loads(summ.read_text())
    assert s["unit"] == "cells" and s["fields"] == 4 and s["cells"] == 4 and s["errors"] == 1
    assert s["fields_without_cells"] == 1 and s["partial_cells"] == 1
    assert sum(v["count"] for v in s["differential"].values()) == 4
    assert [f["cells"] for f in s["per_field"]] == [3, 1, 0, 0]
    assert "4 fields: 4 white cells" in r.stderr
    # the tiny model has no trust.npz: nothing unfamiliar, and the batch verdict says it was not checked
    assert s["unfamiliar"] == 0 and s["unfamiliar_checked"] is False
    assert all(row["unfamiliar"] == "False" for row in rows)
    assert not s["domain_shift"]["detected"] and "not checked" in s["domain_shift"]["message"]
    assert "not checked" in r.stderr


def test_summary_in_single_image_mode(tmp_path, tiny_model_dir):
    (tmp_path / "in").mkdir()
    for k in range(3):
        (tmp_path / "in" / f"{k}.png").write_bytes(image_bytes(seed=k))
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    summ = tmp_path / "s.json"
    r = run(
        "classify",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "r.csv"),
        "--summary",
        str(summ),
        "--threshold",
        "0.5",
        "--quiet",
        model=tiny_model_dir,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(summ.read_text())
    assert s["unit"] == "images" and s["inputs"] == 4 and s["classified"] == 3 and s["errors"] == 1
    assert sum(v["count"] for v in s["differential"].values()) == 3
    assert 0 <= s["flagged"] <= 3 and "per_field" not in s
    assert s["unfamiliar"] == 0 and s["domain_shift"]["n"] == 3 and "not checked" in s["domain_shift"]["message"]


def test_fields_summary_leaves_unfamiliar_cells_out_of_the_differential_and_calls_the_shift():
    box = CellBox(0, 0, 10, 10, False, 2.0)

    def cell(k: int, odd: bool) -> CellResult:
        pred = Prediction("f", "neutrophil", 0.99, (0.0, 0.0, 0.01, 0.99), odd, unfamiliar=odd)
        return CellResult(k, box, pred)

    fields = [FieldResult(f"f{i}.png", cells=tuple(cell(k, k < 4) for k in range(1, 6))) for i in range(6)]
    s = summarise_fields(fields, CLASSES, 0.5, "m", expected_unfamiliar=0.05).as_dict()
    assert s["cells"] == 30 and s["unfamiliar"] == 18 and s["flagged"] == 18 and s["low_confidence"] == 0
    assert s["counts"]["neutrophil"] == 12 and s["differential"]["neutrophil"]["percent"] == 100.0
    assert s["per_field"][0]["unfamiliar"] == 3 and s["per_field"][0]["counts"]["neutrophil"] == 2
    assert s["domain_shift"]["detected"] and s["domain_shift"]["n"] == 30 and s["unfamiliar_checked"] is True


def test_summary_folder_must_exist(tmp_path, tiny_model_dir):
    r = run(
        "classify",
        str(tmp_path),
        "--out",
        str(tmp_path / "x.csv"),
        "--summary",
        str(tmp_path / "no" / "s.json"),
        model=tiny_model_dir,
    )
    assert r.returncode == 2 and "--summary" in r.stderr


def test_cells_go_through_the_single_image_path(tiny_model_dir):
    """One code path: a found cell's probabilities are those of its crop classified as a single image."""
    clf = Classifier.load(tiny_model_dir)
    rgb = make_field(cells=THREE, seed=1)
    (res,) = list(classify_fields(clf, [from_bytes("f.png", _png(rgb))], 0.5, thumbnails=True))
    assert len(res.cells) == 3 and res.sha256 and res.thumbnail is not None
    for c in res.cells:
        alone = clf.predict_proba([crop_cell(rgb, c.box)])[0]
        np.testing.assert_allclose(c.prediction.probabilities, alone, atol=1e-6)
        assert c.prediction.sha256.startswith(res.sha256 + "#")
        assert model_input(crop_cell(rgb, c.box), clf.input_size, clf.framing).shape == (
            clf.input_size,
            clf.input_size,
            3,
        )
    frame = fields_frame([res], CLASSES)
    assert list(frame["cell"]) == [1, 2, 3] and frame["sha256"].is_unique
    s = summarise_fields([res], CLASSES, 0.5, clf.version)
    assert s.classified == 3 and sum(s.counts.values()) == 3

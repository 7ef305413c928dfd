"""The batch hold: when a batch is called shifted, every classified prediction is flagged for review
(``flag_reason`` ``batch_shift``), in the results file, the table and the summary; nothing else changes."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from conftest import CLASSES
from hematovision.detection.cells import CellResult, FieldResult
from hematovision.detection.report import summarise_fields, summarise_images
from hematovision.detection.wbc import CellBox
from hematovision.reports import tables
from hematovision.reports.results_file import ResultsWriter, hold_csv, hold_results
from hematovision.serving.classifier import BATCH_SHIFT, Prediction


def _pred(name, cls="neutrophil", conf=0.95, unfamiliar=False, error="", score=0.0):
    if error:
        return Prediction(name, error=error)
    probs = tuple(conf if c == cls else (1 - conf) / 3 for c in CLASSES)
    return Prediction(name, cls, conf, probs, conf < 0.5 or unfamiliar, unfamiliar=unfamiliar, unfamiliarity=score)


def _batch():
    """30 confident, 5 low-confidence, 25 unfamiliar (called shifted at 5% expected), one error."""
    preds = [_pred(f"=ok{k}.png") for k in range(30)] + [_pred(f"low{k}.png", conf=0.4) for k in range(5)]
    preds += [_pred(f"odd{k}.png", "monocyte", 0.9, unfamiliar=True, score=9.0) for k in range(25)]
    return preds + [_pred("broken.png", error="not an image")]


def test_summary_hold_counts_every_classified_prediction_as_flagged():
    s = summarise_images(_batch(), CLASSES, 0.5, "m@1", expected_unfamiliar=0.05)
    assert s.domain_shift().detected and (s.flagged, s.held, s.batch_held) == (30, 0, False)
    assert s.hold() == 30 and s.hold() == 0  # once
    d = json.loads(s.to_json())
    assert (d["flagged"], d["held"], d["batch_held"], d["classified"], d["low_confidence"]) == (60, 30, True, 60, 5)
    assert d["differential"]["neutrophil"]["count"] == 35  # held cells stay in the differential, unfamiliar ones not
    quiet = summarise_images(_batch()[:35], CLASSES, 0.5, "m@1", expected_unfamiliar=0.05)
    assert not quiet.domain_shift().detected and quiet.hold() == 0 and not quiet.batch_held and quiet.flagged == 5


def test_summary_hold_per_field():
    def field(name, preds):
        return FieldResult(name, cells=tuple(CellResult(k + 1, CellBox(0, 0, 10, 10, False, 2.0), p)
                                             for k, p in enumerate(preds)))

    preds = _batch()[:-1]
    fields = [field(f"f{k}.jpg", preds[k::3]) for k in range(3)] + [FieldResult("empty.jpg")]
    s = summarise_fields(fields, CLASSES, 0.5, "m@1", expected_unfamiliar=0.05)
    assert s.hold() == 30 and [f["flagged"] for f in s.per_field] == [20, 20, 20, 0]


def _frame():
    return tables.predictions_frame(_batch() + [Prediction("nocell.jpg")], CLASSES)


def test_hold_frame_flags_accepted_rows_and_leaves_the_rest():
    frame = _frame()
    held = tables.hold_frame(frame)
    ok = frame["error"] == ""
    assert held.loc[frame["predicted_class"] == "", "flagged"].eq(False).all()  # error rows, a field without a cell
    assert held.loc[ok & (frame["predicted_class"] != ""), "flagged"].all()
    assert list(held["flag_reason"][:30]) == [BATCH_SHIFT] * 30
    assert set(held["flag_reason"][30:35]) == {"low_confidence"} and set(held["flag_reason"][35:60]) == {"unfamiliar"}
    pd.testing.assert_frame_equal(held.drop(columns=["flagged", "flag_reason"]),
                                  frame.drop(columns=["flagged", "flag_reason"]))


def test_hold_csv_changes_only_flagged_and_reason_of_accepted_rows(tmp_path):
    preds = _batch()
    out = tmp_path / "r.csv"
    with ResultsWriter(out, CLASSES, 0.5, "m@1") as w:
        for p in preds:
            w.write(p)
    before = out.read_bytes()
    assert hold_results(out) == 30
    rows_before = list(csv.reader(io.StringIO(before.decode(), newline="")))
    rows_after = list(csv.reader(out.open(newline="", encoding="utf-8")))
    head = rows_after[0]
    flag, why = head.index("flagged"), head.index("flag_reason")
    assert rows_after[1][0] == "'=ok0.png"  # neutralised names stay neutralised
    for b, a in zip(rows_before, rows_after):
        same = [x == y for k, (x, y) in enumerate(zip(b, a)) if k not in (flag, why)]
        assert all(same)
    assert [r[flag] for r in rows_after[1:31]] == ["True"] * 30 and {r[why] for r in rows_after[1:31]} == {BATCH_SHIFT}
    assert rows_after[31:] == rows_before[31:]  # low confidence, unfamiliar and the error row unchanged
    assert out.read_bytes().count(b"\r\n") == before.count(b"\r\n")  # same line endings
    assert not list(tmp_path.glob(".*tmp"))


def test_hold_csv_on_a_stream_and_on_a_header_only_file(tmp_path):
    src = io.StringIO("file,predicted_class,confidence,flagged,error\r\na.png,lymphocyte,0.9,False,\r\n", newline="")
    dst = io.StringIO(newline="")
    assert hold_csv(src, dst) == 1 and dst.getvalue().splitlines()[1] == "a.png,lymphocyte,0.9,True,"
    assert hold_csv(io.StringIO(""), io.StringIO()) == 0


def test_hold_parquet_parts(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from hematovision.reports import results_file

    monkeypatch.setattr(results_file, "PARQUET_ROWS_PER_PART", 20)
    out = tmp_path / "r.parquet"
    with ResultsWriter(out, CLASSES, 0.5, "m@1") as w:
        for p in _batch():
            w.write(p)
    assert len(list(out.glob("part-*.parquet"))) == 4
    assert hold_results(out) == 30
    t = pq.read_table(out).to_pandas()
    assert t["flagged"].sum() == 60 and (t["flag_reason"] == BATCH_SHIFT).sum() == 30
    assert t.loc[t["error"] != "", "flagged"].eq(False).all() and not list(out.glob(".*tmp"))

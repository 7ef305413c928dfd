"""The differential report: content from classify results (+ review decisions), the PDF's text and images, bad input.

PDF text is read with poppler's ``pdftotext`` and images counted with ``pdfimages -list``,
as a lab's tools (and our acceptance check) would read the file; skipped with the reason
when poppler-utils is not installed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, image_bytes
from hematovision import cli
from hematovision.imaging.decode import decode_image
from hematovision.reports import content as rc
from hematovision.reports import tables as report
from hematovision.reports.pdf import render_pdf
from hematovision.review import UNUSABLE, ReviewStore, report_reviews
from hematovision.review.store import thumbnail_png
from hematovision.serving.classifier import Prediction

REPO = Path(__file__).resolve().parent.parent
VERSION = "tiny@abc123"
needs_poppler = pytest.mark.skipif(
    not (shutil.which("pdftotext") and shutil.which("pdfimages")),
    reason="poppler-utils (pdftotext, pdfimages) not installed: apt-get install poppler-utils",
)


def pdf_text(path: Path, layout: bool = True) -> str:
    args = ["pdftotext", *(["-layout"] if layout else []), str(path), "-"]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def pdf_image_count(path: Path) -> int:
    out = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True, check=True).stdout
    return len(out.strip().splitlines()) - 2  # two header lines


def differential_counts(text: str) -> dict[str, int]:
    """``class -> count`` from the differential table's lines (``neutrophil   35   49.3%   40–75``)."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s*(eosinophil|lymphocyte|monocyte|neutrophil)\s+(\d+)\s+[\d.]+%", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = int(m.group(2))
    return found


def write_results(folder: Path, rows, version: str = VERSION, threshold: float = 0.8) -> Path:
    """Images on disk and the CSV ``classify`` would write for them; rows are ``(name, class, confidence)``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(report.columns(CLASSES) + ["threshold", "model_version"])
        for k, (name, cls, conf) in enumerate(rows):
            if cls is None:
                w.writerow(
                    [str(folder / name), "", "", "", "", "", "", False, "corrupt or truncated PNG", threshold, version]
                )
                continue
            (folder / name).write_bytes(image_bytes("PNG", size=(96, 80), seed=k))
            probs = [(1 - conf) / 3] * 4
            probs[CLASSES.index(cls)] = conf
            w.writerow(
                [
                    str(folder / name),
                    cls,
                    f"{conf:.6f}",
                    *[f"{p:.6f}" for p in probs],
                    conf < threshold,
                    "",
                    threshold,
                    version,
                ]
            )
    return path


# 14 cells and an unreadable image; flagged below 0.8: l3, m0, n_low.
MIXED = (
    [(f"e{k}.png", "eosinophil", 0.95) for k in range(3)]
    + [(f"l{k}.png", "lymphocyte", 0.9) for k in range(3)]
    + [("l3.png", "lymphocyte", 0.7)]
    + [("m0.png", "monocyte", 0.5), ("m1.png", "monocyte", 0.97)]
    + [(f"n{k}.png", "neutrophil", 0.99) for k in range(4)]
    + [("n_low.png", "neutrophil", 0.6), ("broken.png", None, 0)]
)


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_report(*args: str, capsys=None) -> tuple[int, str]:
    code = cli.main(["report", *map(str, args)])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


# ---------------------------------------------------------------------- the CLI, end to end


@needs_poppler
def test_classify_then_report_names_sample_operator_model_counts_and_is_preliminary(tmp_path, tiny_model_dir):
    folder = tmp_path / "batch"
    folder.mkdir()
    for k in range(12):
        (folder / f"cell_{k:02d}.png").write_bytes(image_bytes("PNG", size=(90, 70), seed=k))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    env = {**os.environ, "HEMATOVISION_MODEL": str(tiny_model_dir), "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = tmp_path / "results.csv"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hematovision",
            "classify",
            str(folder),
            "--out",
            str(results),
            "--threshold",
            "0.9",
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    with open(results, newline="") as fh:
        rows = list(csv.DictReader(fh))
    pdf = tmp_path / "report.pdf"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hematovision",
            "report",
            str(results),
            "--out",
            str(pdf),
            "--sample-id",
            "SMP-0042",
            "--operator",
            "Dr. Ada Lovelace",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    text = pdf_text(pdf)
    assert "SMP-0042" in text and "Dr. Ada Lovelace" in text
    assert rows[0]["model_version"] in text
    expected = {c: sum(row["predicted_class"] == c for row in rows if not row["error"]) for c in CLASSES}
    assert differential_counts(text) == expected
    n_flagged = sum(row["flagged"] == "True" for row in rows)
    assert n_flagged == 12  # the tiny model is never 90% sure
    assert f"PRELIMINARY \u2014 {n_flagged} flagged cells not yet reviewed" in text
    assert "Signed off by" not in text
    assert "For research and education only" in text and re.search(r"Page 1 of \d+", text)
    assert "corrupt.png" in text  # the error row is listed, not dropped
    assert pdf_image_count(pdf) >= 12


@needs_poppler
def test_preliminary_until_every_flagged_cell_is_reviewed_then_signed(tmp_path, capsys):
    results = write_results(tmp_path / "b", MIXED)
    db = tmp_path / "reviews.sqlite3"
    store = ReviewStore(db)
    pdf = tmp_path / "r.pdf"
    code, err = run_report(
        results, "--out", pdf, "--sample-id", "S1", "--operator", "op", "--review-db", db, capsys=capsys
    )
    assert code == 0, err
    text = pdf_text(pdf)
    assert "PRELIMINARY \u2014 3 flagged cells not yet reviewed" in text
    assert differential_counts(text) == {"eosinophil": 3, "lymphocyte": 4, "monocyte": 2, "neutrophil": 5}

    folder = tmp_path / "b"
    for name, pred, verdict in [("m0.png", "monocyte", "lymphocyte"), ("n_low.png", "neutrophil", "neutrophil")]:
        store.decide(sha_of(folder / name), VERSION, verdict, "Grace", predicted_class=pred, classes=CLASSES)
    # a decision under another model version does not count for these results
    store.decide(
        sha_of(folder / "l3.png"), "other@999", "monocyte", "Eve", predicted_class="lymphocyte", classes=CLASSES
    )
    code, err = run_report(results, "--out", pdf, "--review-db", db, capsys=capsys)
    assert code == 0 and "PRELIMINARY \u2014 1 flagged cell not yet reviewed" in pdf_text(pdf)

    store.decide(sha_of(folder / "l3.png"), VERSION, UNUSABLE, "Alan", predicted_class="lymphocyte", classes=CLASSES)
    code, err = run_report(results, "--out", pdf, "--sample-id", "S1", "--review-db", db, capsys=capsys)
    assert code == 0 and "REVIEWED" in err
    text = pdf_text(pdf)
    assert "PRELIMINARY" not in text
    assert "REVIEWED \u2014 all 3 flagged cells reviewed" in text
    assert "Signed off by" in text and "Alan, Grace" in text
    assert differential_counts(text) == {"eosinophil": 3, "lymphocyte": 3 + 1, "monocyte": 1, "neutrophil": 5}
    assert re.search(r"Total white cells\s+13\b", text)
    assert re.search(r"Not a white cell / unusable.*\s1\s*$", text, re.M)
    assert re.search(r"was\s+monocyte", pdf_text(pdf, layout=False))  # the reclassified cell is marked in the gallery
    assert pdf_image_count(pdf) == 14  # every classified cell has its picture


# ---------------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.csv", b"", "is empty"),
        ("header_only.csv", (",".join(report.columns(CLASSES)) + "\n").encode(), "has no rows"),
        (
            "other.csv",
            b"name,age\nann,3\n",
            "not a HematoVision 'classify' CSV: missing column(s) file, predicted_class",
        ),
        (
            "no_probs.csv",
            b"file,predicted_class,confidence,flagged,error\na.png,monocyte,0.5,True,\n",
            "missing column(s) p_<class>",
        ),
        ("binary.csv", bytes(range(256)) * 4, "not a readable CSV"),
        (
            "badclass.csv",
            (",".join(report.columns(CLASSES)) + "\na.png,platelet,0.5,0.1,0.1,0.1,0.5,True,\n").encode(),
            "predicted class 'platelet' is not one of",
        ),
        (
            "badflag.csv",
            (",".join(report.columns(CLASSES)) + "\na.png,monocyte,0.5,0.1,0.1,0.5,0.3,maybe,\n").encode(),
            "'maybe' is not true or false",
        ),
        (
            "badconf.csv",
            (",".join(report.columns(CLASSES)) + "\na.png,monocyte,high,0.1,0.1,0.5,0.3,True,\n").encode(),
            "confidence is not a number",
        ),
    ],
)
def test_bad_results_give_one_line_and_exit_2(tmp_path, capsys, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    code, err = run_report(path, "--out", tmp_path / "x.pdf", capsys=capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and reason in err, err
    assert not (tmp_path / "x.pdf").exists()


def test_missing_file_and_folder_and_review_db(tmp_path, capsys):
    code, err = run_report(tmp_path / "nope.csv", "--out", tmp_path / "x.pdf", capsys=capsys)
    assert code == 2 and "no such file" in err
    results = write_results(tmp_path / "b", MIXED[:3])
    code, err = run_report(results, "--out", tmp_path / "no" / "x.pdf", capsys=capsys)
    assert code == 2 and "folder for --out does not exist" in err
    code, err = run_report(results, "--out", tmp_path / "x.pdf", "--review-db", tmp_path / "none.db", capsys=capsys)
    assert code == 2 and "no review database" in err
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    code, err = run_report(results, "--out", tmp_path / "x.pdf", "--review-db", tmp_path / "junk.db", capsys=capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a SQLite database" in err


# ---------------------------------------------------------------------- images that are gone


@needs_poppler
def test_moved_images_come_from_the_review_store_or_are_marked_missing(tmp_path, capsys):
    results = write_results(tmp_path / "b", MIXED)
    folder = tmp_path / "b"
    store = ReviewStore(tmp_path / "r.db")
    kept = folder / "m0.png"
    store.queue(
        [Prediction(str(kept), "monocyte", 0.5, (0.1, 0.1, 0.5, 0.3), True, "", sha_of(kept))],
        CLASSES,
        VERSION,
        thumbnails={sha_of(kept): thumbnail_png(decode_image(kept.read_bytes()).rgb)},
    )
    store.decide(sha_of(kept), VERSION, "lymphocyte", "Grace")
    for f in folder.glob("*.png"):
        f.unlink()
    pdf = tmp_path / "r.pdf"
    code, err = run_report(results, "--out", pdf, "--review-db", tmp_path / "r.db", capsys=capsys)
    assert code == 0, err
    assert "13 cell image(s) not available" in err
    text = pdf_text(pdf)
    assert (
        len(re.findall(r"image\s+not\s+available", pdf_text(pdf, layout=False))) == 13 + 1
    )  # 13 pictures and the gallery's note
    assert pdf_image_count(pdf) == 1  # the stored thumbnail
    # the decision still applies: found by file name and model version in the store
    assert differential_counts(text)["lymphocyte"] == 5 and re.search(r"was\s+monocyte", pdf_text(pdf, layout=False))


# ---------------------------------------------------------------------- content rules


def test_content_counts_final_classes_and_leaves_unusable_and_unfamiliar_out(tmp_path):
    results = write_results(tmp_path / "b", MIXED)
    frame = rc.read_results(results)
    frame["unfamiliar"] = [k == 0 for k in range(len(frame))]  # e0: unfamiliar, not reviewed
    store = ReviewStore(tmp_path / "r.db")
    store.decide(
        sha_of(tmp_path / "b" / "n0.png"), VERSION, UNUSABLE, "x", predicted_class="neutrophil", classes=CLASSES
    )
    reviews = report_reviews(store)
    c = rc.build_report(
        frame, reviews=reviews, images=rc.files_on_disk(), sample_id=" S ", operator="op", created_at="now"
    )
    assert {r.cell_class: r.count for r in c.differential} == {
        "eosinophil": 2,
        "lymphocyte": 4,
        "monocyte": 2,
        "neutrophil": 4,
    }
    assert c.status.n_flagged == 3 and c.status.n_flagged_unreviewed == 3 and c.status.n_unusable == 1
    assert c.total_cells == 12 and c.n_unidentified == 1 and c.n_unusable == 1 and c.n_errors == 1
    assert abs(sum(r.percent for r in c.differential) - 100.0) < 1e-9
    assert [g.name for g in c.gallery] == CLASSES + [rc.UNIDENTIFIED, UNUSABLE]
    assert c.sample_id == "S" and c.model.version == "tiny@abc123" and not c.model.found
    assert all(
        cell.image is not None and cell.image.shape == (rc.THUMB_PX, rc.THUMB_PX, 3)
        for g in c.gallery
        for cell in g.cells
    )
    assert c.errors == ((str(tmp_path / "b" / "broken.png"), "corrupt or truncated PNG"),)
    assert dict(zip(*np.unique([r.reference is not None for r in c.differential], return_counts=True)))[True] == 4


def test_dashboard_csv_review_columns_count_without_a_store(tmp_path):
    frame = rc.read_results(write_results(tmp_path / "b", MIXED[:4]))
    frame = report.with_reviews(
        frame.assign(sha256=["a", "b", "c", "d"]),
        {"d": type("D", (), {"reviewed_class": "monocyte", "reviewer": "r", "reviewed_at": "2026-01-01T00:00:00Z"})()},
    )
    path = tmp_path / "dash.csv"
    report.to_csv(frame[report.columns(CLASSES) + report.REVIEW_COLUMNS], path, threshold=0.8, model_version=VERSION)
    c = rc.report_from_csv(path)
    assert {r.cell_class: r.count for r in c.differential}["monocyte"] == 1
    assert c.status.n_reclassified == 1 and c.status.reviewers == ("r",)


def test_zip_members_and_neutralised_names_are_found(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cells/a.png", image_bytes("PNG", seed=5))
    (tmp_path / "batch.zip").write_bytes(buf.getvalue())
    (tmp_path / "=odd.png").write_bytes(image_bytes("PNG", seed=6))
    lookup = rc.files_on_disk(tmp_path)
    assert lookup("batch.zip/cells/a.png", "") == image_bytes("PNG", seed=5)
    assert lookup("batch.zip/cells/missing.png", "") is None and lookup("", "") is None
    path = tmp_path / "r.csv"
    frame = report.predictions_frame(
        [Prediction("=odd.png", "monocyte", 0.9, (0.05, 0.05, 0.9, 0.0), False, "", "")], CLASSES
    )
    report.to_csv(frame[report.columns(CLASSES)], path, threshold=0.5, model_version=VERSION)
    assert "'=odd.png" in path.read_text()
    c = rc.report_from_csv(path)
    assert c.gallery[0].cells[0].image is not None and c.gallery[0].cells[0].file == "=odd.png"


def test_field_mode_crops_each_box_and_draws_numbered_boxes(tmp_path):
    from PIL import Image

    field = np.full((300, 400, 3), 225, np.uint8)
    yy, xx = np.mgrid[:300, :400]
    for cx, cy in ((80, 90), (300, 200)):
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < 30**2] = (90, 40, 140)
    Image.fromarray(field).save(tmp_path / "field.png")
    cols = report.columns(CLASSES) + ["threshold", "model_version", "cell", "x0", "y0", "x1", "y1", "partial", "note"]
    path = tmp_path / "cells.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        w.writerow(
            ["field.png", "monocyte", 0.9, 0.0, 0.1, 0.9, 0.0, False, "", 0.8, VERSION, 1, 40, 50, 120, 130, False, ""]
        )
        w.writerow(
            [
                "field.png",
                "neutrophil",
                0.6,
                0.0,
                0.1,
                0.3,
                0.6,
                True,
                "",
                0.8,
                VERSION,
                2,
                260,
                160,
                340,
                240,
                False,
                "",
            ]
        )
        w.writerow(
            [
                "empty.png",
                "",
                "",
                "",
                "",
                "",
                "",
                False,
                "",
                0.8,
                VERSION,
                "",
                "",
                "",
                "",
                "",
                "",
                "no white cell found",
            ]
        )
    c = rc.report_from_csv(path)
    assert c.field_mode and c.n_no_cell == 1 and c.total_cells == 2 and c.n_rows == 3 and c.fields_left_out == 0
    view, empty = c.fields
    assert view.image is not None and [b.cell for b in view.boxes] == [1, 2]
    assert empty.file == "empty.png" and empty.image is None and empty.boxes == ()  # listed, marked missing
    cells = [cell for g in c.gallery for cell in g.cells]
    assert [cell.label for cell in cells] == ["field 1 \u00b7 cell 1", "field 1 \u00b7 cell 2"]
    for cell in cells:  # each crop holds its own (dark) cell, not the whole field
        assert cell.image is not None and cell.image.mean() < 200
    pdf = render_pdf(c)
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000


def test_overlong_sample_id_is_refused_in_one_line(tmp_path, capsys):
    results = write_results(tmp_path / "b", MIXED[:2])
    code, err = run_report(results, "--out", tmp_path / "x.pdf", "--sample-id", "x " * 5000, capsys=capsys)
    assert code == 2 and err.strip() == "error: the sample ID is longer than 200 characters"


def test_render_never_fails_on_odd_text_and_no_cells(tmp_path):
    results = write_results(tmp_path / "b", [("broken.png", None, 0)])
    c = rc.report_from_csv(
        results, sample_id="<b>&amp; \u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9 \u4e2d", operator="O'Brien <script>"
    )
    assert c.total_cells == 0 and c.gallery == ()
    assert render_pdf(c).startswith(b"%PDF")


def test_a_csv_saved_with_a_byte_order_mark_is_read(tmp_path):
    results = write_results(tmp_path / "b", MIXED[:3])
    results.write_bytes(b"\xef\xbb\xbf" + results.read_bytes())  # as spreadsheet programs save "CSV UTF-8"
    c = rc.report_from_csv(results)
    assert c.total_cells == 3 and c.differential[0].count == 3


def test_a_held_batch_is_preliminary_and_says_how_many_were_held(tmp_path):
    from hematovision.reports.results_file import hold_results

    results = write_results(tmp_path / "b", MIXED)
    rows = list(csv.reader(results.open(newline="")))  # with the trust columns, as classify writes them
    flag = rows[0].index("flagged")
    rows = [rows[0] + report.TRUST_COLUMNS] + [
        r + ["False", "low_confidence" if r[flag] == "True" else "", ""] for r in rows[1:]
    ]
    with results.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    before = rc.report_from_csv(results)
    held = hold_results(results)
    c = rc.report_from_csv(results)
    assert held > 0 and before.n_held == 0 and c.n_held == held
    assert c.status.n_flagged == before.status.n_flagged + held and c.status.preliminary
    assert c.differential == before.differential  # held cells stay in the differential
    pdf = tmp_path / "held.pdf"
    pdf.write_bytes(render_pdf(c))
    assert re.search(rf"Held\s+for\s+review\s+with\s+their\s+batch.*?\s{held}\b", pdf_text(pdf))

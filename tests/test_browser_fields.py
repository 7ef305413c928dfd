"""Real-browser journey for whole fields: upload a field, see the boxes, download the per-cell CSV.

Debian chromium driven by Playwright against ``streamlit run Home.py`` with a tiny model; a screenshot
of the Whole fields mode is saved to ``$HEMATOVISION_SHOTS`` (default ``/tmp/hematovision-shots``).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pandas as pd
import pytest

from hematovision.app.devserver import CHROMIUM, dashboard, launch_chromium
from hematovision.detection.synthetic import WhiteCell, make_field

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("HEMATOVISION_SHOTS", "/tmp/hematovision-shots"))
THREE = (WhiteCell(150, 140, 60, 3), WhiteCell(460, 300, 55, 1), WhiteCell(300, 380, 65, 4))


def _png(rgb) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (run `bash scripts/install-browser.sh`)")
    pytest.importorskip("playwright.sync_api")
    env = dict(
        os.environ,
        HEMATOVISION_MODEL=str(tiny_model_dir),
        TF_CPP_MIN_LOG_LEVEL="2",
        HEMATOVISION_REVIEW_DB=str(tmp_path / "reviews.sqlite3"),
    )
    with dashboard(env, tmp_path / "streamlit.log", timeout=60) as url:
        yield url


def test_fields_journey(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
            page.set_default_timeout(30_000)
            page.goto(server + "/classify", timeout=180_000)  # a loaded CI machine can be slow to serve the first page
            expect(page.get_by_text("Whole fields")).to_be_visible(timeout=90_000)  # first model load
            page.get_by_text("Whole fields", exact=True).click()
            expect(page.get_by_text("Upload smear fields, or load the sample field, to start.")).to_be_visible(
                timeout=90_000
            )
            uploader = (
                page.locator("[data-testid=stFileUploader]").filter(has_text="Smear fields").locator("input[type=file]")
            )
            expect(uploader).to_be_attached()
            uploader.set_input_files(
                [
                    {
                        "name": "field_three.png",
                        "mimeType": "image/png",
                        "buffer": _png(make_field(cells=THREE, seed=1)),
                    },
                    {"name": "field_empty.png", "mimeType": "image/png", "buffer": _png(make_field(cells=(), seed=3))},
                ]
            )
            # the boxes: the field image, drawn with its numbered boxes, and the cell selector
            expect(page.get_by_text("field_three.png: 3 white cell(s); boxes coloured by class")).to_be_visible(
                timeout=90_000
            )
            expect(page.locator("[data-testid=stImage] img").first).to_be_visible()
            expect(page.locator("[data-testid=stMetric]").filter(has_text="White cells")).to_contain_text("3")
            page.screenshot(path=str(SHOTS / "fields.png"), full_page=True)

            with page.expect_download() as dl:
                page.get_by_role("button", name="Download per-cell CSV (4 rows)").click()
            target = tmp_path / "cells.csv"
            dl.value.save_as(target)
            out = pd.read_csv(target, keep_default_na=False)
            for col in (
                "file",
                "cell",
                "predicted_class",
                "confidence",
                "x0",
                "y0",
                "x1",
                "y1",
                "partial",
                "note",
                "final_class",
                "threshold",
                "model_version",
            ):
                assert col in out.columns, col
            three = out[out["file"] == "field_three.png"]
            assert sorted(three["cell"].astype(int)) == [1, 2, 3]
            assert (three["predicted_class"] != "").all() and (three["x1"].astype(int) > three["x0"].astype(int)).all()
            empty = out[out["file"] == "field_empty.png"]
            assert len(empty) == 1 and "no white cell" in empty["note"].item()
        finally:
            browser.close()

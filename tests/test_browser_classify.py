"""Real-browser journey through the dashboard: Debian chromium driven by Playwright.

Starts ``streamlit run Home.py`` on a free port with a tiny model, uploads a batch
with one broken file, raises the threshold, filters flagged rows, downloads the
CSV and checks it, and saves a screenshot of each page to ``docs/screenshots/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import image_bytes
from hematovision.app.devserver import CHROMIUM, dashboard, launch_chromium

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("HEMATOVISION_SHOTS", "/tmp/hematovision-shots"))  # README shots: scripts/screenshots.py


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (run `bash scripts/install-browser.sh`)")
    pytest.importorskip("playwright.sync_api")
    env = dict(os.environ, HEMATOVISION_MODEL=str(tiny_model_dir), TF_CPP_MIN_LOG_LEVEL="2")
    with dashboard(env, tmp_path / "streamlit.log", timeout=40) as url:
        yield url


def test_classify_journey(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
            page.set_default_timeout(15_000)

            page.goto(server)
            expect(page.get_by_text("Model card at a glance")).to_be_visible()
            page.screenshot(path=str(SHOTS / "home.png"), full_page=True)

            page.goto(server + "/classify")
            files = [
                {"name": "cell_a.png", "mimeType": "image/png", "buffer": image_bytes("PNG", seed=1)},
                {"name": "broken.png", "mimeType": "image/png", "buffer": b"this is not an image"},
                {"name": "cell_b.jpg", "mimeType": "image/jpeg", "buffer": image_bytes("JPEG", seed=2)},
                {"name": "cell_c.png", "mimeType": "image/png", "buffer": image_bytes("PNG", seed=3)},
            ]
            expect(page.locator("input[type=file]").first).to_be_attached(timeout=60_000)  # first model load
            page.locator("input[type=file]").first.set_input_files(files)
            expect(page.get_by_text("4 of 4 rows shown")).to_be_visible(timeout=45_000)
            expect(page.locator("[data-testid=stMetric]").filter(has_text="Errors")).to_contain_text("1")
            # thumbnails on a busy machine
            expect(page.locator("[data-testid=stDataFrame]").first).to_be_visible(timeout=60_000)

            # raise the threshold to the top with the keyboard on the sidebar slider
            slider = page.locator("[data-testid=stSidebar] input[type=range]").first
            slider.focus()
            slider.press("End")
            expect(page.get_by_text("threshold 1.000")).to_be_visible()

            page.get_by_text("Flagged only", exact=True).click()
            expect(page.get_by_text("3 of 4 rows shown")).to_be_visible()
            page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)

            with page.expect_download() as dl:
                page.get_by_role("button", name="Download CSV (3 rows)").click()
            target = tmp_path / "report.csv"
            dl.value.save_as(target)
            out = pd.read_csv(target, keep_default_na=False)
            assert sorted(out["file"]) == ["cell_a.png", "cell_b.jpg", "cell_c.png"]
            assert out["flagged"].all() and (out["threshold"] == 1.0).all()
            assert out["model_version"].str.startswith("tiny-test-model").all()

            page.get_by_text("All rows", exact=True).click()
            with page.expect_download() as dl:
                page.get_by_role("button", name="Download CSV (4 rows)").click()
            dl.value.save_as(target)
            out = pd.read_csv(target, keep_default_na=False)
            assert len(out) == 4 and out.set_index("file").loc["broken.png", "error"] != ""

            # leaving the page and coming back keeps the results and the filters, with no re-classification
            page.get_by_role("link", name="Model evaluation").first.click()
            expect(page.get_by_text("Model evaluation").first).to_be_visible()
            page.get_by_role("link", name="Classify").first.click()
            expect(page.get_by_text("3 of 4 rows shown")).to_be_visible()

            page.goto(server + "/evaluation")
            page.wait_for_timeout(3000)
            page.screenshot(path=str(SHOTS / "evaluation.png"), full_page=True)
        finally:
            browser.close()

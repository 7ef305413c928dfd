"""The evaluation page in a real browser: charts render, a labeled zip uploads and is evaluated.

Drives Debian's /usr/bin/chromium through Playwright (never a downloaded browser)
against `streamlit run Home.py` on a tiny model with a generated evaluation.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_eval_views import labeled_zip, make_evaluation

from conftest import make_tiny_model_dir
from hematovision.app.devserver import CHROMIUM, dashboard, launch_chromium

pytestmark = pytest.mark.browser

SCREENSHOT = (
    Path(os.environ.get("HEMATOVISION_SHOTS", "/tmp/hematovision-shots")) / "evaluation-test.png"
)  # README shots: scripts/screenshots.py


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A headless Streamlit server on a free port, stopped (only this process) afterwards."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (run scripts/install-browser.sh)")
    pytest.importorskip("playwright.sync_api")
    model = make_tiny_model_dir(tmp_path_factory.mktemp("browser_model"))
    make_evaluation(model)
    env = dict(
        os.environ,
        HEMATOVISION_MODEL=str(model),
        HEMATOVISION_DATA=str(tmp_path_factory.mktemp("no_data")),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    with dashboard(env, tmp_path_factory.mktemp("log") / "streamlit.log", timeout=40) as url:
        yield url


def test_evaluation_page_in_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    zip_path = tmp_path / "mine.zip"
    zip_path.write_bytes(labeled_zip())
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Start at the router: a fresh server asked for a sub-page URL first may run the page alone.
            page.goto(server, wait_until="domcontentloaded")
            sidebar = page.get_by_test_id("stSidebar")
            expect(sidebar.get_by_text("Review threshold (confidence)")).to_be_visible(timeout=30_000)
            sidebar.get_by_text("Model evaluation").click()
            expect(page.get_by_role("heading", name="Model evaluation")).to_be_visible(timeout=30_000)
            # The confusion matrix is drawn: a heatmap layer inside a plotly chart.
            expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_attached(timeout=30_000)
            expect(page.get_by_text("Confusion matrix (counts)").first).to_be_visible()
            expect(page.get_by_text("Per-cell accuracy")).to_be_visible()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=False)

            # Upload a labeled zip and evaluate it live.
            uploader = (
                page.locator('[data-testid="stFileUploader"]').filter(has_text="class").locator('input[type="file"]')
            )
            uploader.set_input_files(str(zip_path))
            button = page.get_by_role("button", name="Evaluate the zip")
            expect(button).to_be_enabled(timeout=20_000)
            button.click()
            expect(page.get_by_text("uploaded images are not kept")).to_be_visible(timeout=40_000)
            images = page.locator('[data-testid="stMetric"]').filter(has_text="Images")
            expect(images).to_contain_text("8", timeout=10_000)
            expect(page.get_by_text("files skipped").first).to_be_visible()
            expect(page.get_by_role("button", name="Download the report (JSON)")).to_be_visible()
            expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_attached()
        finally:
            browser.close()

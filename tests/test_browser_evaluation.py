"""The evaluation page in a real browser: charts render, a labeled zip uploads and is evaluated.

Drives Debian's /usr/bin/chromium through Playwright (never a downloaded browser)
against `streamlit run Home.py` on a tiny model with a generated evaluation.json.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_tiny_model_dir
from test_eval_views import labeled_zip, make_evaluation

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(os.environ.get("HEMATOVISION_SHOTS", "/tmp/hematovision-shots")) / "evaluation-test.png"  # README shots: scripts/screenshots.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A headless Streamlit server on a free port, stopped (only this process) afterwards."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (run scripts/install-browser.sh)")
    pytest.importorskip("playwright.sync_api")
    model = make_tiny_model_dir(tmp_path_factory.mktemp("browser_model"))
    make_evaluation(model)
    port = _free_port()
    env = dict(os.environ, HEMATOVISION_MODEL=str(model), HEMATOVISION_DATA=str(tmp_path_factory.mktemp("no_data")), TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "Home.py", "--server.headless", "true", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 40
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.terminate()
        pytest.fail("streamlit did not start within 40 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_evaluation_page_in_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    zip_path = tmp_path / "mine.zip"
    zip_path.write_bytes(labeled_zip())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
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
            uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="class").locator('input[type="file"]')
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

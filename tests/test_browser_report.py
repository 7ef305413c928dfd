"""Real-browser report journey (Debian chromium driven by Playwright): the PDF from the Classify page.

Classify twelve cells with every one flagged, download the report with a sample ID and an
operator: PRELIMINARY, twelve cell pictures. Review every flagged cell (written to the review
database, as the Review page does), download again: REVIEWED, with the reviewer and a sign-off
line. Then the gallery: cells grouped by class, one opened in the detail view.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import image_bytes
from hematovision.app.devserver import CHROMIUM, dashboard, launch_chromium
from hematovision.review import store as review

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("HEMATOVISION_SHOTS", "/tmp/hematovision-shots"))
N = 12


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (run `bash scripts/install-browser.sh`)")
    if not shutil.which("pdftotext") or not shutil.which("pdfimages"):
        pytest.skip("poppler-utils (pdftotext, pdfimages) not installed (run `bash scripts/install-browser.sh`)")
    pytest.importorskip("playwright.sync_api")
    db = tmp_path / "reviews.sqlite3"
    env = dict(os.environ, HEMATOVISION_MODEL=str(tiny_model_dir), TF_CPP_MIN_LOG_LEVEL="2", **{review.DB_ENV: str(db)})
    with dashboard(env, tmp_path / "streamlit.log", timeout=40) as url:
        yield url, db


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def _images(pdf: Path) -> int:
    return (
        len(
            subprocess.run(
                ["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True
            ).stdout.splitlines()
        )
        - 2
    )


def _idle(page) -> None:
    """Wait until the app's rerun is over (Streamlit shows a Stop button while the script runs)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(300)
    expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)


def _download(page, path: Path, *needles: str, attempts: int = 8) -> tuple[str, str]:
    """Download the report until its text holds every needle: (file name, text).

    The button's bytes are made when the script runs, so a click that lands before the rerun
    for the last input has finished gets the previous PDF, or, when the rerun replaces the file
    under the click, no download at all. On a busy CPU no fixed wait is enough, so poll:
    download, read, and wait for the rerun to end before trying again.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    name = ""
    for _ in range(attempts):
        _idle(page)
        try:
            with page.expect_download(timeout=30_000) as dl:
                page.get_by_role("button", name="Download report (PDF)").click()
        except PlaywrightTimeout:  # the click was lost to a rerun: wait for it to end and click again
            continue
        dl.value.save_as(path)
        assert path.read_bytes().startswith(b"%PDF")
        name, text = dl.value.suggested_filename, _text(path)
        if all(n in text for n in needles):
            return name, text
        page.wait_for_timeout(2_000)
    raise AssertionError(f"no report holding {needles} in {attempts} downloads (last: {name!r})")


def test_report_pdf_from_classify_then_signed_after_review(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, db = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)  # the CPU may be busy: allow for slow reruns
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
            page.set_default_timeout(60_000)  # the CPU may be busy: allow for slow reruns
            page.goto(url)  # the home page first: until Home.py has run st.navigation once, /classify is not routed
            expect(page.get_by_text("Model card at a glance")).to_be_visible(timeout=60_000)
            page.goto(url + "/classify")
            files = [
                {
                    "name": f"cell_{k:02d}.png",
                    "mimeType": "image/png",
                    "buffer": image_bytes("PNG", size=(90, 70), seed=k),
                }
                for k in range(N)
            ]
            expect(page.locator("input[type=file]").first).to_be_attached(timeout=180_000)  # first model load
            page.locator("input[type=file]").first.set_input_files(files)
            expect(page.get_by_text(f"{N} of {N} rows shown")).to_be_visible(timeout=120_000)
            slider = page.locator("[data-testid=stSidebar] input[type=range]").first
            slider.focus()
            slider.press("End")
            expect(page.get_by_text("threshold 1.000")).to_be_visible()

            for label, value in (("Sample ID", "SMP-7781"), ("Operator", "Dr. Browser")):
                box = page.get_by_label(label, exact=True)
                box.fill(value)
                box.press("Enter")
                _idle(page)
            first = tmp_path / "first.pdf"
            name, text = _download(page, first, "SMP-7781", "Dr. Browser")
            assert name == "hematovision_report_SMP-7781.pdf"
            assert "SMP-7781" in text and "Dr. Browser" in text and "tiny-test-model@" in text
            assert f"PRELIMINARY \u2014 {N} flagged cells not yet reviewed" in text
            assert _images(first) == N

            # every flagged cell reviewed (as the Review page writes it), then any rerun of Classify picks it up
            store = review.ReviewStore(db)
            items = store.items()
            assert len(items) == N
            for it in items:
                store.decide(it.sha256, it.model_version, it.predicted_class, "Dr. Reviewer")
            box = page.get_by_label("Operator", exact=True)
            box.fill("Dr. Browser Jr.")
            box.press("Enter")
            expect(page.locator("[data-testid=stMetric]").filter(has_text="Reviewed")).to_contain_text(str(N))
            _idle(page)
            second = tmp_path / "second.pdf"
            _, text = _download(page, second, "Dr. Browser Jr.", "REVIEWED")
            assert "PRELIMINARY" not in text and f"REVIEWED \u2014 all {N} flagged cells reviewed" in text
            assert "Dr. Reviewer" in text and "Signed off by" in text and "Dr. Browser Jr." in text

            # the gallery: every cell by class; Open puts it in the detail view
            page.get_by_text("Gallery view: the rows shown, as cells grouped by class").click()
            opens = page.get_by_role("button", name=re.compile(r"^Open #\d+$"))
            expect(opens).to_have_count(N, timeout=30_000)
            expect(page.get_by_text(re.compile(r"· confirmed$")).first).to_be_visible()
            opens.first.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "gallery.png"), timeout=90_000)  # the viewport: cheaper on a busy CPU
            last = opens.nth(N - 1)
            number = int(last.inner_text().strip().removeprefix("Open #"))
            last.click()
            picked = page.get_by_role("combobox", name="Image", exact=True)
            expect(picked).to_match_aria_snapshot(f'- combobox "Image": cell_{number - 1:02d}.png')  # the opened cell
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True, timeout=90_000)
            print("failure screenshot:", tmp_path / "failure.png")
            raise
        finally:
            browser.close()

"""Real-browser review journey (Debian chromium driven by Playwright, as the Classify page's test).

Classify a batch, raise the threshold so every image is flagged, reclassify one on the
Review page, reload the app (a new session), and find the decision kept on the page,
in the downloaded reviews CSV, and in the database.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import image_bytes
from hematovision.app.devserver import CHROMIUM, dashboard, launch_chromium
from hematovision.review import store as review

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("HEMATOVISION_SHOTS", "/tmp/hematovision-shots"))


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (run `bash scripts/install-browser.sh`)")
    pytest.importorskip("playwright.sync_api")
    db = tmp_path / "reviews.sqlite3"
    env = dict(os.environ, HEMATOVISION_MODEL=str(tiny_model_dir), TF_CPP_MIN_LOG_LEVEL="2", **{review.DB_ENV: str(db)})
    with dashboard(env, tmp_path / "streamlit.log", timeout=40) as url:
        yield url, db


def test_review_journey_survives_a_reload(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a busy 2-core machine: waits, not sleeps

    url, db = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
            page.set_default_timeout(15_000)

            # classify: three images, all flagged at threshold 1.0
            page.goto(url)  # the home page first: until Home.py has run st.navigation once, /classify is not routed
            expect(page.get_by_text("Model card at a glance")).to_be_visible(timeout=60_000)
            page.goto(url + "/classify")
            files = [
                {"name": f"cell_{k}.png", "mimeType": "image/png", "buffer": image_bytes("PNG", seed=k)}
                for k in (1, 2, 3)
            ]
            expect(page.locator("input[type=file]").first).to_be_attached(timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(files)
            expect(page.get_by_text("3 of 3 rows shown")).to_be_visible(timeout=45_000)
            slider = page.locator("[data-testid=stSidebar] input[type=range]").first
            slider.focus()
            slider.press("End")
            expect(page.get_by_text("threshold 1.000")).to_be_visible()

            # review: reclassify the first flagged image
            page.get_by_role("link", name="Review").first.click()
            expect(page.get_by_text("0 of 3 reviewed")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("1 of 3 shown")).to_be_visible()
            first_file = page.locator("code").filter(has_text=re.compile(r"^cell_\d\.png$")).first.inner_text()
            who = page.get_by_label("Reviewer")
            who.fill("Dr. Test")
            who.press("Enter")
            page.wait_for_timeout(500)
            # the class buttons sit in fixed places (key 1-4); pick one that is not the prediction
            # (.first: while a rerun draws, Streamlit can briefly keep the previous copy of a keyed element)
            confirm = page.locator(".st-key-hv_decide_confirm button").first
            predicted = confirm.inner_text().split("Confirm", 1)[1].split()[0]
            new_class = next(c for c in ["eosinophil", "lymphocyte", "monocyte", "neutrophil"] if c != predicted)
            page.locator(f".st-key-hv_decide_{new_class} button").first.click()
            expect(page.get_by_text("1 of 3 reviewed")).to_be_visible(timeout=30_000)
            expect(
                page.get_by_role("button", name=re.compile(r"Download all reviews \(CSV, 1 decision\)"))
            ).to_be_visible()  # the rerun is complete
            page.screenshot(path=str(SHOTS / "review.png"), full_page=True)

            # reload: a new session; the decision comes back from the database
            page.reload()
            page.get_by_role("link", name="Review").first.click() if "/review" not in page.url else None
            # The new session starts at the model's default threshold, where the two unreviewed images are not
            # flagged: they leave the list; the reviewed one stays, with its decision.
            expect(page.get_by_text("1 of 1 reviewed")).to_be_visible(timeout=30_000)
            expect(page.get_by_text(f"Reviewed: {new_class} (reclassified) by Dr. Test")).to_be_visible()
            # With the threshold back where it was, they are pending again.
            slider = page.locator("[data-testid=stSidebar] input[type=range]").first
            slider.focus()
            slider.press("End")
            expect(page.get_by_text("1 of 3 reviewed")).to_be_visible(timeout=60_000)

            with page.expect_download() as dl:
                page.get_by_role("button", name=re.compile(r"Download all reviews")).click()
            saved = tmp_path / "reviews.csv"
            dl.value.save_as(saved)
            out = pd.read_csv(saved, keep_default_na=False)
            assert len(out) == 1
            row = out.iloc[0]
            assert (row["file"], row["reviewed_class"], row["final_class"], row["reviewer"]) == (
                first_file,
                new_class,
                new_class,
                "Dr. Test",
            )
            assert row["predicted_class"] != new_class and bool(row["current"])
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print("failure screenshot:", tmp_path / "failure.png")
            raise
        finally:
            browser.close()

    [item] = [i for i in review.ReviewStore(db).items() if i.decision is not None]
    assert (item.file, item.final_class, item.status) == (first_file, new_class, "reclassified")

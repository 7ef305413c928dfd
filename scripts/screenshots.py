"""Take the README's screenshots of the dashboard on the shipped model and the sample images.

    .venv/bin/python scripts/screenshots.py     # needs /usr/bin/chromium and the data root
"""

import os
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hematovision.devserver import dashboard, launch_chromium  # noqa: E402
SHOTS = ROOT / "docs" / "screenshots"


def main() -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("HEMATOVISION_MODEL", None)  # the shipped model
    with dashboard(env, timeout=40) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.set_default_timeout(90_000)
        page.goto(url)
        expect(page.get_by_text("Model card at a glance")).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(SHOTS / "home.png"), full_page=True)
        page.get_by_role("link", name="Classify").first.click()
        page.get_by_role("button", name="Load sample images").click()
        expect(page.get_by_text("of 32 rows shown")).to_be_visible()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)
        page.get_by_role("link", name="Model evaluation").first.click()
        page.wait_for_timeout(5000)
        page.screenshot(path=str(SHOTS / "evaluation.png"), full_page=False)
        browser.close()


if __name__ == "__main__":
    main()

"""Take the README's screenshots of the dashboard on the shipped model and the sample images.

    .venv/bin/python scripts/screenshots.py     # needs /usr/bin/chromium and the data root

Writes, under docs/screenshots/:
    home.png        the home page
    classify.png    the Classify page after "Load sample images"
    evaluation.png  the Model evaluation page
    review.png      the Review page: a flagged sample with its Grad-CAM overlay and the decision buttons
    models.png      the Model versions page, with one adapted version ("lab-example") in the table
    held.png        the Classify page on a simulated other laboratory (60 PBC validation cells re-stained and
                    cropped like a rapid-stain laboratory): the batch warning, and the batch held for review

Per-user state (review database, adapted versions) goes to a fresh temporary
HEMATOVISION_HOME, never to the real one. The adapted version is made with the
CLI on 8 PBC images per class after the first three screenshots, so those show
the dashboard as a fresh install does (no model-version picker in the sidebar).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hematovision.app.devserver import dashboard, launch_chromium  # noqa: E402
from hematovision.config import TRAINING_CLASSES, data_root  # noqa: E402
from hematovision.data import datasets as ds  # noqa: E402
from hematovision.evaluation.shifts import SUITE  # noqa: E402
from hematovision.imaging.decode import read_rgb  # noqa: E402
from hematovision.modeling import persistence  # noqa: E402

SHOTS = ROOT / "docs" / "screenshots"


def adapt_example(home: Path, env: dict, per_class: int = 8) -> None:
    """Create the adapted version "lab-example" in ``home`` from a few real PBC images per class."""
    labeled = home / "labeled"
    for c in TRAINING_CLASSES:
        (labeled / c).mkdir(parents=True)
        for f in sorted((data_root() / "pbc" / c).glob("*.jpg"))[:per_class]:
            shutil.copy(f, labeled / c / f.name)
    subprocess.run([sys.executable, "-m", "hematovision", "adapt", str(labeled), "--name", "lab-example", "--quiet"],
                   cwd=ROOT, env=env, check=True, timeout=1800)


def simulated_lab_zip(path: Path, n: int = 60) -> Path:
    """A zip of ``n`` PBC validation cells under the stain-shift suite's ``lab_rapid_tight`` (JPEG)."""
    items = [i for i in ds.read_manifest(ROOT / "models" / persistence.MANIFEST_FILE, data_root())
             if i.split == "val" and "/pbc/" in str(i.path)]
    family = next(f for f in SUITE if f.name == "lab_rapid_tight")
    with zipfile.ZipFile(path, "w") as zf:
        for j, item in enumerate(items[:: max(1, len(items) // n)][:n]):
            rgb = family.apply(read_rgb(item.path), j)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            zf.writestr(f"cell_{j:02d}.jpg", buf.tobytes())
    return path


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="hematovision-shots-"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HEMATOVISION_HOME=str(home),
               HEMATOVISION_REVIEW_DB=str(home / "reviews.sqlite3"))
    env.pop("HEMATOVISION_MODEL", None)  # the shipped model
    try:
        with dashboard(env, timeout=40) as url, sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.set_default_timeout(300_000)
            expect.set_options(timeout=300_000)  # a busy machine: wait for what is awaited, however long
            page.goto(url)
            expect(page.get_by_text("Model card at a glance")).to_be_visible()
            expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0)  # every element drawn, not placeholders
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SHOTS / "home.png"), full_page=True)
            page.get_by_role("link", name="Classify").first.click()
            page.get_by_role("button", name="Load sample images").click()
            expect(page.get_by_text("of 32 rows shown")).to_be_visible()
            # the whole page drawn: no placeholders, the rerun over, the differential chart rendered
            expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0)
            expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            page.mouse.move(0, 0)  # no button tooltip over the sidebar
            page.wait_for_timeout(3000)
            page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)
            page.get_by_role("link", name="Model evaluation").first.click()
            page.wait_for_timeout(5000)
            page.screenshot(path=str(SHOTS / "evaluation.png"), full_page=False)

            adapt_example(home, env)

            # Review: the samples flagged on Classify; if the model flagged none, raise the threshold to the top
            page.get_by_role("link", name="Review").first.click()
            queued, empty = (
                page.get_by_text(re.compile(r"^\d+ of \d+ reviewed$")),
                page.get_by_text("Nothing to review yet"),
            )
            expect(queued.or_(empty).first).to_be_visible()
            if empty.is_visible():
                slider = page.locator("[data-testid=stSidebar] input[type=range]").first
                slider.focus()
                slider.press("End")
            expect(page.get_by_role("button", name="✗ Unusable")).to_be_visible(timeout=300_000)
            page.get_by_text("Grad-CAM heat map").click()  # on request only
            expect(page.get_by_text("Grad-CAM for")).to_be_visible(timeout=300_000)
            expect(page.get_by_role("button", name="✗ Unusable")).to_be_visible()
            page.wait_for_timeout(3000)
            page.screenshot(path=str(SHOTS / "review.png"), full_page=True)

            page.get_by_role("link", name="Model versions").first.click()
            expect(page.get_by_text("Adapt to your laboratory")).to_be_visible()
            page.wait_for_timeout(3000)
            page.screenshot(path=str(SHOTS / "models.png"), full_page=True)

            # A simulated other laboratory: the warning and the hold
            page.get_by_role("link", name="Classify").first.click()
            page.locator("input[type=file]").first.set_input_files(str(simulated_lab_zip(home / "other_lab.zip")))
            expect(page.get_by_text("Held for review:")).to_be_visible()
            expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0)
            expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)
            page.mouse.move(0, 0)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(SHOTS / "held.png"), full_page=False)
            browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

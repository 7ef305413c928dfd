"""Real-browser checks of what AppTest cannot see (Debian chromium driven by Playwright).

- an idle open tab costs the server (almost) no CPU (no file watcher walking the repository);
- the sample images, then an upload of 12 images, leave a table of exactly 12;
- Adapt from a zip shows success, no exception, and switching to the new version brings its threshold;
- the Review page at 800 px: whole button labels, keyboard shortcuts record a decision;
- no page shows an exception.
"""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from pathlib import Path

import cv2
import pytest

from conftest import image_bytes
from hematovision.app.devserver import CHROMIUM, dashboard, launch_chromium
from hematovision.review import store as review

pytestmark = pytest.mark.browser
PAGES = ["", "classify", "review", "evaluation", "models"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (run `bash scripts/install-browser.sh`)")
    pytest.importorskip("playwright.sync_api")
    env = dict(
        os.environ,
        HEMATOVISION_MODEL=str(tiny_model_dir),
        TF_CPP_MIN_LOG_LEVEL="2",
        HEMATOVISION_HOME=str(tmp_path / "home"),
        **{review.DB_ENV: str(tmp_path / "reviews.sqlite3")},
    )
    with dashboard(env, tmp_path / "streamlit.log", timeout=90) as url:
        yield url


@pytest.fixture
def browser():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=240_000)  # a loaded 2-core machine (TensorFlow import included): generous waits
    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def _open(browser, url: str, width: int = 1400, path: str = ""):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": 1400})
    page.set_default_timeout(240_000)
    page.goto(url)  # Home first: until Home.py has run st.navigation once, other paths are not routed
    expect(page.get_by_text("Start here")).to_be_visible()
    if path:
        page.goto(f"{url}/{path}")
    return page


def _no_exception(page) -> None:
    from playwright.sync_api import expect

    expect(page.locator("[data-testid=stException]")).to_have_count(0)


def test_an_idle_open_tab_costs_the_server_almost_nothing(server, browser):
    from playwright.sync_api import expect

    page = _open(browser, server, path="classify")
    expect(page.locator("input[type=file]").first).to_be_attached()
    page.wait_for_timeout(3_000)  # let the first render settle
    c0, t0 = cpu_seconds(server.pid), time.monotonic()
    page.wait_for_timeout(20_000)
    used, wall = cpu_seconds(server.pid) - c0, time.monotonic() - t0
    assert used / wall < 0.15, (
        f"the server used {used:.1f} CPU s in {wall:.0f} s with one idle tab ({used / wall:.2f} core)"
    )


def test_samples_then_an_upload_of_12_leave_a_table_of_12(server, browser):
    from playwright.sync_api import expect

    from hematovision.app import samples

    if not all((samples.data_root() / s.relpath).is_file() for s in samples.read_manifest()):
        pytest.skip("sample images not on this machine")
    page = _open(browser, server, path="classify")
    page.get_by_role("button", name="Load sample images").click()
    expect(page.get_by_text("32 of 32 rows shown")).to_be_visible()
    files = [
        {"name": f"mine_{k:02d}.png", "mimeType": "image/png", "buffer": image_bytes("PNG", seed=200 + k)}
        for k in range(12)
    ]
    page.locator("input[type=file]").first.set_input_files(files)
    expect(page.get_by_text("12 of 12 rows shown")).to_be_visible()
    expect(page.get_by_text("The table holds your upload: 12 files")).to_be_visible()
    expect(page.locator("[data-testid=stMetric]").filter(has_text="Images")).to_contain_text("12")
    _no_exception(page)


def _labeled_zip(n: int) -> bytes:
    from test_adapt import _blobs

    images, labels = _blobs(n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, (img, lbl) in enumerate(zip(images, labels)):
            zf.writestr(f"{lbl}/{k}.png", cv2.imencode(".png", img[..., ::-1])[1].tobytes())
    return buf.getvalue()


def test_adapt_from_a_zip_succeeds_and_switching_brings_its_threshold(server, browser, tmp_path):
    from playwright.sync_api import expect

    from hematovision.modeling import persistence

    page = _open(browser, server, path="models")
    expect(page.get_by_text("Adapt to your laboratory")).to_be_visible()
    page.locator("input[type=file]").first.set_input_files(
        {"name": "lab.zip", "mimeType": "application/zip", "buffer": _labeled_zip(5)}
    )
    name = page.get_by_role("textbox", name="Name of the new version")
    name.fill("lab-browser")
    name.press("Tab")
    page.get_by_role("button", name="Adapt").click()
    expect(page.get_by_text("saved: adapted from")).to_be_visible(timeout=180_000)
    expect(page.get_by_text("the model in use has not changed")).to_be_visible()
    _no_exception(page)
    default = persistence.load_card(tmp_path / "home" / "models" / "lab-browser").default_threshold
    page.get_by_role("button", name=re.compile(r"^Use lab-browser@.* now$")).click()
    expect(page.get_by_text("It is now in use.")).to_be_visible()
    _no_exception(page)
    # the sidebar slider shows the new version's default threshold
    expect(page.locator("[data-testid=stSidebar]")).to_contain_text(f"{round(default, 3):.3f}")


def test_review_at_800_px_whole_labels_and_keyboard(server, browser):
    from playwright.sync_api import expect

    page = _open(browser, server, width=800, path="classify")
    files = [
        {"name": f"cell_{k}.png", "mimeType": "image/png", "buffer": image_bytes("PNG", seed=k)} for k in (1, 2, 3)
    ]
    page.locator("input[type=file]").first.set_input_files(files)
    expect(page.get_by_text("3 of 3 rows shown")).to_be_visible()
    slider = page.locator("[data-testid=stSidebar] input[type=range]").first
    slider.focus()
    slider.press("End")  # flag all three
    expect(page.get_by_text("threshold 1.000")).to_be_visible()
    page.locator("[data-testid=stSidebar]").get_by_role("link", name="Review").click()
    progress = page.get_by_text(re.compile(r"^\d+ of \d+ reviewed$")).first
    expect(progress).to_have_text("0 of 3 reviewed")
    keys = ["confirm", "unusable", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    for key in keys:  # nothing cut to "Reclas…": every label fits its button
        button = page.locator(f".st-key-hv_decide_{key} button").first
        expect(button).to_be_visible()
        clipped = button.evaluate(
            "b => [...b.querySelectorAll('p, div')].some(e => e.scrollWidth > e.clientWidth + 1)"
        )
        assert not clipped, button.inner_text()
    page.locator("h1").first.click()  # focus on the page, not a text field
    _press_until(page, "2", progress, "0 of 3 reviewed", "1 of 3 reviewed")  # reclassify as the second class
    _press_until(page, "y", progress, "1 of 3 reviewed", "2 of 3 reviewed")  # confirm the next one
    _no_exception(page)


def _press_until(page, key: str, progress, before: str, after: str, attempts: int = 6) -> None:
    """Press a review shortcut until the progress reads ``after``. A key pressed while a rerun replaces the page can
    land before the shortcuts are attached again and do nothing; it is pressed again only while the progress still
    reads ``before``, so a press that did count is never repeated."""
    from playwright.sync_api import expect

    for _ in range(attempts):
        # the rerun over (no Stop button) before the key
        expect(page.get_by_role("button", name="Stop", exact=True)).to_have_count(0)
        page.keyboard.press(key)
        try:
            expect(progress).to_have_text(after, timeout=20_000)
            return
        except AssertionError:
            expect(progress).to_have_text(before)  # not counted: anything else fails here
    expect(progress).to_have_text(after)


def test_no_page_shows_an_exception(server, browser):
    from playwright.sync_api import expect

    page = _open(browser, server)
    for path in PAGES:
        page.goto(f"{server}/{path}")
        expect(page.locator("[data-testid=stSidebar]")).to_be_visible()
        page.wait_for_timeout(1500)
        _no_exception(page)

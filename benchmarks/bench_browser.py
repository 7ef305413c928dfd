"""Dashboard timings a user feels, in a real browser (Debian chromium through Playwright).

    python benchmarks/bench_browser.py [--sizes 500,1000,2000] [--zip] [--files] [--idle 45] [--model DIR]

Starts ``streamlit run Home.py`` (``hematovision.devserver``: loopback, ``.streamlit/config.toml``)
on the shipped model with a fresh review database and per-user folder, then measures:

1. idle CPU: the server process's CPU seconds (``/proc/PID/stat`` utime + stime) over ``--idle``
   seconds while one tab is open on the Classify page and nobody touches it;
2. upload to table: ``set_input_files`` with N Kaggle TEST JPEGs (read from the data root, never
   copied into the repository) as N files, and as one zip of them, until the page says
   "N of N rows shown". "upload done" is when the page first shows the server working on the batch
   (the "Classifying" progress bar or the results), so the uploader's share can be told apart;
3. page switch (sidebar link → the page's title), threshold change (sidebar slider, one key press →
   the caption shows the new threshold), one review decision (a decision button → the progress text moves).

Each size runs in a fresh browser page with "Clear results" first. Prints the figures; writes nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_images(n: int) -> list[Path]:
    from hematovision.config import data_root

    paths = sorted((data_root() / "blood-cells" / "dataset2-master" / "images" / "TEST").glob("*/*.jpeg"))
    if len(paths) < n:
        raise SystemExit(f"need {n} Kaggle TEST images under the data root, found {len(paths)}")
    step = len(paths) / n
    return [paths[int(k * step)] for k in range(n)]


def as_zip(paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.writestr(f"{p.parent.name}/{p.name}", p.read_bytes())
    return buf.getvalue()


def upload(page, payload, n: int, timeout_s: float = 600) -> dict:
    from playwright.sync_api import expect

    working = page.get_by_text(re.compile(r"Classifying \d+ new image|rows shown")).first
    t0 = time.perf_counter()
    page.locator("input[type=file]").first.set_input_files(payload, timeout=timeout_s * 1000)
    t_sent = time.perf_counter()
    expect(working).to_be_visible(timeout=timeout_s * 1000)
    t_work = time.perf_counter()
    expect(page.get_by_text(f"{n} of {n} rows shown")).to_be_visible(timeout=timeout_s * 1000)
    t_done = time.perf_counter()
    return {"set_input_files_s": t_sent - t0, "server_working_s": t_work - t0, "table_s": t_done - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500,1000,2000")
    ap.add_argument("--files", action="store_true", help="upload as separate files (default: both files and zip)")
    ap.add_argument("--zip", action="store_true", help="upload as one zip (default: both)")
    ap.add_argument("--idle", type=float, default=45.0, help="seconds of idle CPU measurement (0: skip)")
    ap.add_argument(
        "--interactions", type=int, default=3, help="repeats of page switch / threshold / decision (0: skip)"
    )
    ap.add_argument("--model", help="model folder (default: HEMATOVISION_MODEL or models/)")
    a = ap.parse_args(argv)
    modes = [m for m, on in (("files", a.files), ("zip", a.zip)) if on] or ["files", "zip"]
    sizes = [int(s) for s in a.sizes.split(",") if s]

    from playwright.sync_api import expect, sync_playwright

    from hematovision.app.devserver import dashboard, launch_chromium
    from hematovision.modeling.persistence import machine_description

    expect.set_options(timeout=600_000)  # what is measured is the wait itself; a timeout only guards a hang

    home = Path(tempfile.mkdtemp(prefix="hv-bench-"))
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        HEMATOVISION_HOME=str(home),
        HEMATOVISION_REVIEW_DB=str(home / "reviews.sqlite3"),
    )
    if a.model:
        env["HEMATOVISION_MODEL"] = a.model
    print(f"machine: {machine_description()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; load average {os.getloadavg()[0]:.2f}")
    results = []
    with dashboard(env, home / "streamlit.log", timeout=60) as (url), sync_playwright() as pw:
        pid = url.pid
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            expect(page.get_by_text("Model card at a glance")).to_be_visible()
            page.get_by_role("link", name="Classify").first.click()
            expect(page.locator("input[type=file]").first).to_be_attached()

            if a.idle:
                page.wait_for_timeout(5000)  # let the first render settle
                c0, t0 = cpu_seconds(pid), time.monotonic()
                page.wait_for_timeout(a.idle * 1000)
                c1, t1 = cpu_seconds(pid), time.monotonic()
                print(
                    f"\nidle CPU, one tab open on Classify: {c1 - c0:.2f} CPU s over {t1 - t0:.1f} s = "
                    f"{(c1 - c0) / (t1 - t0):.3f} core"
                )

            for n in sizes:
                paths = test_images(n)
                for mode in modes:
                    page.goto(url)
                    expect(page.get_by_text("Model card at a glance")).to_be_visible()
                    page.get_by_role("link", name="Classify").first.click()
                    expect(page.locator("input[type=file]").first).to_be_attached()
                    clear = page.get_by_role("button", name="Clear results")
                    if clear.count():
                        clear.click()
                        expect(clear).to_have_count(0)
                    payload = (
                        [str(p) for p in paths]
                        if mode == "files"
                        else {"name": f"batch_{n}.zip", "mimeType": "application/zip", "buffer": as_zip(paths)}
                    )
                    c0 = cpu_seconds(pid)
                    r = upload(page, payload, n)
                    r.update(n=n, mode=mode, server_cpu_s=cpu_seconds(pid) - c0)
                    results.append(r)
                    print(
                        f"{n} images as {mode}: table after {r['table_s']:.1f} s ({n / r['table_s']:.0f} images/s); "
                        f"server working after {r['server_working_s']:.1f} s; server CPU {r['server_cpu_s']:.1f} s",
                        flush=True,
                    )

            if a.interactions:
                inter: dict[str, list[float]] = {"page switch": [], "threshold change": [], "review decision": []}
                sidebar = page.get_by_test_id("stSidebar")
                for _ in range(a.interactions):
                    t = time.perf_counter()
                    sidebar.get_by_role("link", name="Model evaluation").click()
                    expect(page.get_by_role("heading", name="Model evaluation")).to_be_visible()
                    inter["page switch"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    sidebar.get_by_role("link", name="Classify").click()
                    expect(page.get_by_text(re.compile(r"\d+ of \d+ rows shown"))).to_be_visible()
                    inter["page switch"].append(time.perf_counter() - t)
                slider = sidebar.locator("input[type=range]").first
                for key in ["ArrowRight", "ArrowLeft"] * a.interactions:
                    cap = page.get_by_text(re.compile(r"rows shown · threshold")).first
                    before = cap.inner_text()
                    slider.focus()
                    t = time.perf_counter()
                    slider.press(key)
                    expect(cap).not_to_have_text(before)
                    inter["threshold change"].append(time.perf_counter() - t)
                sidebar.get_by_role("link", name="Review").click()
                prog = page.get_by_text(re.compile(r"^\d+ of \d+ reviewed$")).first
                expect(prog).to_be_visible()
                for _ in range(a.interactions):
                    before = prog.inner_text()
                    t = time.perf_counter()
                    page.get_by_role("button", name=re.compile("Confirm")).first.click()
                    expect(prog).not_to_have_text(before)
                    inter["review decision"].append(time.perf_counter() - t)
                print()
                for k, v in inter.items():
                    print(
                        f"{k}: median {statistics.median(v):.2f} s, max {max(v):.2f} s "
                        f"(n={len(v)}: {', '.join(f'{x:.2f}' for x in v)})"
                    )
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

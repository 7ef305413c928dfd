"""Dashboard benchmark: a 500-image batch on the Classify page, later interactions, and the evaluation page.

    python benchmarks/bench_dashboard.py [--images 500] [--eval-repeats 7] [--browser] [--model DIR]

Everything runs through Streamlit's ``AppTest`` (the same harness as ``tests/test_app_*.py``),
in this process, on the shipped model (``models/``, or ``--model`` / ``HEMATOVISION_MODEL``):

1. Classify page: ``Home.py`` -> ``switch_page("pages/classify.py")`` (model load happens here,
   timed separately), then ``file_uploader[0].set_value([...500 images...]).run()`` timed.
   Images: real Kaggle TEST / PBC JPEGs from the data root (``hematovision.config.data_root()``),
   every k-th of the sorted list so both sets are represented; synthetic JPEGs if absent.
   Then, each timed and each with the number of images sent to the model afterwards
   (a counting wrapper around ``Classifier.classify``, as in ``tests/test_app_classify.py``,
   cross-checked against ``session_state["hv_cache"].inferred``): threshold change,
   "Flagged only" filter, switch to ``pages/evaluation.py``, switch back to ``pages/classify.py``.
   AppTest only sees the final element tree of a run, and the page removes its progress
   bar (``bar.empty()``) when classification ends, so the bar is observed by wrapping
   ``DeltaGenerator.progress``: every call (the bar's creation and each update) is recorded.
2. Evaluation page: a fresh AppTest, one warm-up render, then ``--eval-repeats`` times
   ``switch_page("Home.py").run()`` (untimed) and ``switch_page("pages/evaluation.py").run()`` (timed).
3. ``--browser``: ``streamlit run Home.py`` + Debian's ``/usr/bin/chromium`` via Playwright; time from
   clicking the sidebar's "Model evaluation" link until the confusion-matrix heatmap is attached
   and its title visible (after one warm-up visit), repeated.

Prints a table of figures; nothing is written to docs (copy the figures by hand).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HOME = str(REPO / "Home.py")


def _images(n: int) -> tuple[list[tuple[str, bytes, str]], str]:
    from hematovision.config import data_root

    root = data_root()
    paths = sorted((root / "blood-cells" / "dataset2-master" / "images" / "TEST").glob("*/*.jpeg"))
    paths += sorted((root / "pbc").glob("*/*.jpg"))
    if paths:
        step = max(1, len(paths) // n)
        chosen = (paths[::step] + paths)[:n]
        out = [(f"{i:04d}_{p.name}", p.read_bytes(), "image/jpeg") for i, p in enumerate(chosen)]
        return out, f"real JPEGs from {root} (every {step}th of {len(paths)} Kaggle TEST + PBC files)"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buf, format="JPEG")
        out.append((f"synthetic_{i:04d}.jpg", buf.getvalue(), "image/jpeg"))
    return out, "synthetic 320x240 JPEGs (no data root found)"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_classify(n: int) -> dict:
    from streamlit.delta_generator import DeltaGenerator
    from streamlit.testing.v1 import AppTest

    from hematovision.serving.classifier import Classifier

    seen: list[str] = []
    real_classify = Classifier.classify

    def counting(self, inputs, *args, **kwargs):
        inputs = list(inputs)
        seen.extend(i.name for i in inputs)
        yield from real_classify(self, inputs, *args, **kwargs)

    progress_calls: list[tuple[float, str]] = []
    real_progress = DeltaGenerator.progress

    def recording(self, value, text=None, *a, **k):
        progress_calls.append((float(value), str(text)))
        return real_progress(self, value, text, *a, **k)

    import streamlit as st

    real_st_progress = st.progress

    def st_recording(value, text=None, *a, **k):  # ``st.progress`` is bound to the main DeltaGenerator at import
        progress_calls.append((float(value), str(text)))
        return real_progress(real_st_progress.__self__, value, text, *a, **k)

    Classifier.classify = counting
    DeltaGenerator.progress = recording
    st.progress = st_recording
    try:
        files, source = _images(n)
        at = AppTest.from_file(HOME, default_timeout=600)
        r: dict = {"source": source, "n": len(files)}
        r["home_s"] = _timed(at.run)
        r["classify_page_first_s"] = _timed(lambda: at.switch_page("pages/classify.py").run())  # model load
        assert not at.exception, at.exception
        at.file_uploader[0].set_value(files)
        r["batch_s"] = _timed(at.run)
        assert not at.exception, at.exception
        frame = next(d.value for d in at.dataframe if "predicted_class" in d.value.columns)
        r["rows"], r["errors"] = len(frame), int((frame["error"] != "").sum())
        r["model_images_first"] = len(seen)
        r["cache_inferred_first"] = at.session_state["hv_cache"].inferred
        r["progress_calls"] = len(progress_calls)
        r["progress_first"] = progress_calls[0][1] if progress_calls else ""
        r["progress_last"] = progress_calls[-1][1] if progress_calls else ""
        r["progress_in_tree_after_run"] = len(at.get("progress"))
        r["progress_calls_before_interactions"] = len(progress_calls)
        base = len(seen)

        steps = []

        def step(label, fn):
            before, pbefore = len(seen), len(progress_calls)
            s = _timed(fn)
            assert not at.exception, (label, at.exception)
            shown = next((c.value for c in at.caption if "rows shown" in c.value), "")
            steps.append((label, s, len(seen) - before, len(progress_calls) - pbefore, shown.split(" · model")[0]))

        def threshold():
            at.session_state["threshold"] = 0.99
            at.run()

        def flagged():
            at.session_state["threshold"] = 0.99  # AppTest sends no sidebar slider state after switch_page
            at.checkbox(key="hv_flagged_only").check().run()

        def to_eval():
            at.session_state["threshold"] = 0.99
            at.switch_page("pages/evaluation.py").run()

        def back():
            at.session_state["threshold"] = 0.99
            at.switch_page("pages/classify.py").run()

        step("threshold 0.912 -> 0.990", threshold)
        step("'Flagged only' filter on", flagged)
        step("switch to pages/evaluation.py", to_eval)
        step("switch back to pages/classify.py", back)
        r["steps"] = steps
        r["model_images_after_first"] = len(seen) - base
        r["cache_inferred_after_first"] = at.session_state["hv_cache"].inferred - r["cache_inferred_first"]
        return r
    finally:
        Classifier.classify = real_classify
        DeltaGenerator.progress = real_progress
        st.progress = real_st_progress


def bench_evaluation(repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(HOME, default_timeout=600)
    at.run()
    warm = _timed(lambda: at.switch_page("pages/evaluation.py").run())
    assert not at.exception, at.exception
    plots = len(at.get("plotly_chart"))
    times = []
    for _ in range(repeats):
        at.switch_page("Home.py").run()
        times.append(_timed(lambda: at.switch_page("pages/evaluation.py").run()))
        assert not at.exception, at.exception
    title = [t.value for t in at.title]
    return {"warmup_s": warm, "times": times, "plots": plots, "title": title}


def bench_browser(repeats: int) -> dict:
    from playwright.sync_api import expect, sync_playwright

    from hematovision.app.devserver import dashboard, launch_chromium

    with dashboard(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")) as url:
        times = []
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url, wait_until="domcontentloaded")
                sidebar = page.get_by_test_id("stSidebar")
                expect(sidebar.get_by_text("Review threshold (confidence)")).to_be_visible(timeout=60_000)
                for _ in range(repeats + 1):  # first visit is the warm-up
                    t = time.perf_counter()
                    sidebar.get_by_text("Model evaluation").click()
                    expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_attached(timeout=60_000)
                    expect(page.get_by_text("Confusion matrix (counts)").first).to_be_visible(timeout=60_000)
                    times.append(time.perf_counter() - t)
                    # leave the page again (to the dashboard's first nav entry) and wait until the heatmap is gone
                    sidebar.locator('[data-testid="stSidebarNavLink"]').first.click()
                    expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(0, timeout=60_000)
            finally:
                browser.close()
        return {"warmup_s": times[0], "times": times[1:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--eval-repeats", type=int, default=7)
    ap.add_argument("--browser", action="store_true", help="also time the evaluation page in headless Chromium")
    ap.add_argument("--browser-only", action="store_true")
    ap.add_argument("--model", help="model folder (default: HEMATOVISION_MODEL or models/)")
    a = ap.parse_args(argv)
    if a.model:
        os.environ["HEMATOVISION_MODEL"] = a.model
    os.chdir(REPO)
    import json

    from hematovision.modeling.persistence import machine_description

    card = json.loads((REPO / "models" / "model_card.json").read_text())
    print(f"machine: {machine_description()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; load average {os.getloadavg()[0]:.2f}")
    print(f"model: {card['name']}@{card['model_sha256'][:12]} (created {card['created']})")
    if not a.browser_only:
        c = bench_classify(a.images)
        print(f"\n== Classify page, {c['n']} images: {c['source']}")
        print("| step | seconds | images sent to the model |")
        print("|---|---:|---:|")
        print(f"| Home.py first run | {c['home_s']:.2f} | 0 |")
        print(
            f"| switch to pages/classify.py (first render, model load included) | {c['classify_page_first_s']:.2f} | "
            f"0 |"
        )
        print(
            f"| upload {c['n']} images + run ({c['n'] / c['batch_s']:.1f} images/s) | {c['batch_s']:.2f} | "
            f"{c['model_images_first']} |"
        )
        for label, s, k, p, shown in c["steps"]:
            print(f"| {label} | {s:.2f} | {k} (progress calls {p}; page says: {shown}) |")
        print(f"rows {c['rows']}, error rows {c['errors']}; hv_cache.inferred after upload {c['cache_inferred_first']}")
        print(
            f"images sent to the model after the first run: {c['model_images_after_first']} (hv_cache.inferred delta "
            f"{c['cache_inferred_after_first']})"
        )
        print(
            f"progress bar: {c['progress_calls']} st.progress calls during the batch run, first "
            f"{c['progress_first']!r}, last {c['progress_last']!r}; "
            f"progress elements in the final tree: {c['progress_in_tree_after_run']}"
        )
        e = bench_evaluation(a.eval_repeats)
        t = e["times"]
        print(f"\n== Evaluation page (AppTest), title {e['title']}, {e['plots']} plotly charts")
        print(
            f"warm-up {e['warmup_s']:.2f} s; {len(t)} warm renders: median {statistics.median(t):.3f} s, max "
            f"{max(t):.3f} s, min {min(t):.3f} s"
        )
        print("all: " + ", ".join(f"{x:.3f}" for x in t))
    if a.browser or a.browser_only:
        b = bench_browser(max(3, a.eval_repeats // 2))
        t = b["times"]
        print("\n== Evaluation page (Chromium, click 'Model evaluation' -> confusion matrix visible)")
        print(f"warm-up {b['warmup_s']:.2f} s; {len(t)} warm: median {statistics.median(t):.3f} s, max {max(t):.3f} s")
        print("all: " + ", ".join(f"{x:.3f}" for x in t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

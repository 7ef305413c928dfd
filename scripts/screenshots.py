"""Take the README's screenshots of the dashboard on the shipped model and the sample images.

    .venv/bin/python scripts/screenshots.py     # needs /usr/bin/chromium and the data root
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("HEMATOVISION_MODEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "Home.py", "--server.headless", "true", "--server.port", str(port),
                             "--server.address", "127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(80):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
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
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()

"""Run the dashboard on a free loopback port and open Debian's chromium on it.

Shared by the real-browser tests, the benchmarks and ``scripts/screenshots.py``,
so all of them start the app and the browser the same way: loopback only, and
never a downloaded browser (no ``playwright install``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..config import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
#: Headless, no sandbox (root in CI), and none of the background traffic this offline machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class ServerURL(str):
    """The dashboard's URL, with the server's process id (for resource measurements)."""

    pid: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(env: dict, log_path: Path | None = None, timeout: float = 60, poll: float = 0.3) -> Iterator[ServerURL]:
    """Start ``streamlit run Home.py`` with ``env``, wait until it is healthy, yield its URL, stop it.

    Every other setting comes from ``.streamlit/config.toml``, as for ``make run`` (the file
    watcher among them), so what the tests measure is what a user runs.

    Raises ``RuntimeError`` (with the end of the server log, if one is kept) when it does not start in time.
    """
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed when the server stops)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace")[-3000:] if log_path else ""
                raise RuntimeError(f"streamlit did not start within {timeout:.0f} s\n{tail}")
            time.sleep(poll)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


def launch_chromium(playwright):
    """Debian's chromium, headless, through Playwright's sync API."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

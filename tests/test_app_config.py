"""The dashboard's Streamlit settings: this machine only, XSRF on, no file watcher, no Deploy button."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _config() -> dict:
    return tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())


def test_served_to_this_machine_only_with_xsrf_protection():
    server = _config()["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True and server.get("enableCORS", True) is True
    # `make run` passes no address of its own, so the file decides.
    run = next(line for line in (REPO / "Makefile").read_text().splitlines() if "streamlit run" in line)
    assert "--server.address" not in run and "0.0.0.0" not in run
    readme = (REPO / "README.md").read_text()
    assert "## Serving a lab network (on purpose)" in readme and "reverse proxy that authenticates" in readme


def test_idle_settings_and_toolbar():
    cfg = _config()
    assert cfg["server"]["fileWatcherType"] == "none" and cfg["server"]["runOnSave"] is False
    assert cfg["client"]["toolbarMode"] == "minimal"
    assert cfg["browser"]["gatherUsageStats"] is False


def test_streamlit_reads_these_settings():
    import os

    from streamlit import config

    old = os.getcwd()
    try:
        os.chdir(REPO)
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.address") == "127.0.0.1"
        assert config.get_option("server.fileWatcherType") == "none"
        assert config.get_option("client.toolbarMode") == "minimal"
    finally:
        os.chdir(old)
        config.get_config_options(force_reparse=True)

#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the real-browser tests
# (Playwright drives /usr/bin/chromium; it never downloads a browser), and
# poppler-utils (pdftotext, pdfimages) with which the report tests read the PDF.
set -euo pipefail
if [ -x /usr/bin/chromium ] && command -v pdftotext >/dev/null; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-browser: not root and no sudo; browser and PDF-reading tests will be skipped" >&2; exit 0; fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver poppler-utils fonts-dejavu-core fonts-noto-color-emoji >/dev/null

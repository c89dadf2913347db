#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/support/browser.py drives it with Playwright, which then
# downloads no browser of its own). Needs root and apt-get; does nothing where a Chromium is installed, and
# without root it says so and leaves the browser tests to skip.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_chromium.sh: no Chromium and no root apt-get to install it; the browser tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null

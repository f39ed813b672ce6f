#!/usr/bin/env bash
# Headless Chromium and its chromedriver (Debian packages) for the browser tests:
# tests/test_view.py (neuroglancer screenshots) and tests/test_dashboard.py (the Dask
# dashboard's task stream). Idempotent: does nothing when both are installed. Without
# them those tests skip, saying so.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
echo "== installing chromium and chromium-driver"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

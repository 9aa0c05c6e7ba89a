#!/usr/bin/env bash
# The loss explorer's browser tests (tests/browser): Debian's chromium driven by Playwright for
# Python, and Debian's firefox-esr driven by puppeteer-core (Node), in a virtual environment of
# their own. Screenshots land in test-artifacts/browser/. No browser is downloaded by either
# driver (`playwright install` is never run): both drive the system browsers by their paths.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "::group::Browser tests (loss explorer)"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
chromium_path="$(command -v chromium)"
firefox_path="$(command -v firefox-esr)"

python3 -m venv --clear .venv-browser
# shellcheck disable=SC1091
. .venv-browser/bin/activate
pip install -q torch==2.13.0 -e ".[browser]"
# Firefox is driven over WebDriver BiDi by puppeteer-core (its own browser download skipped).
PUPPETEER_SKIP_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
    --prefix .venv-browser/node puppeteer-core@24.43.1

mkdir -p test-artifacts/browser
LOSSREG_CHROMIUM="$chromium_path" \
LOSSREG_FIREFOX="$firefox_path" \
LOSSREG_PUPPETEER_DIR="$PWD/.venv-browser/node" \
LOSSREG_REQUIRE_BROWSER=1 \
LOSSREG_TEST_ARTIFACTS="$PWD/test-artifacts/browser" \
    python -m pytest tests/browser -q
echo "::endgroup::"

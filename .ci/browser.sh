#!/usr/bin/env bash
# The loss explorer's browser tests (tests/browser): Debian's chromium driven by Playwright for
# Python, in a virtual environment of their own. Screenshots land in test-artifacts/browser/.
# No browser is downloaded by Playwright (`playwright install` is never run): it drives the
# system chromium through its executable path.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "::group::Browser tests (loss explorer)"

if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
fi
chromium_path="$(command -v chromium)"

python3 -m venv --clear .venv-browser
# shellcheck disable=SC1091
. .venv-browser/bin/activate
pip install -q torch==2.13.0 -e ".[browser]"

mkdir -p test-artifacts/browser
LOSSREG_CHROMIUM="$chromium_path" \
LOSSREG_REQUIRE_BROWSER=1 \
LOSSREG_TEST_ARTIFACTS="$PWD/test-artifacts/browser" \
    python -m pytest tests/browser -q
echo "::endgroup::"

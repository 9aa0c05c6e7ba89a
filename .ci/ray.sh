#!/usr/bin/env bash
# CI step for Ray Serve (lossreg_service.serving.ray): Ray is heavy, so it gets its own venv with
# the `ray` extra, and its tests (tests/ray, which start a real local Ray) run only here.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "::group::Ray Serve: lossreg[ray] in .venv-ray, tests/ray"
python3 -m venv --clear .venv-ray
# shellcheck disable=SC1091
. .venv-ray/bin/activate
# torch first: the CPU wheel, as in the README's commands.
pip install torch==2.13.0 -e ".[ray]" "pytest>=8" "pytest-timeout>=2.3"
# Ray's own deprecation warnings are not ours (pyproject turns warnings into errors).
RUN_RAY_TESTS=1 python -m pytest tests/ray -p no:cacheprovider -W "ignore::DeprecationWarning"
deactivate
echo "::endgroup::"

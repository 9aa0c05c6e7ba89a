#!/usr/bin/env bash
# fastai beyond `fit` (tests marked `fastai`), in an environment of its own: fastai's torchvision
# pins a torch other than the CPU wheel the default environment uses. torch 2.14.1 with
# torchvision 0.29.1 is a pair that imports together (torch 2.13.0's CPU wheel does not work
# with PyPI's torchvision). Self-contained: creates .venv-fastai, installs, runs, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv --clear .venv-fastai
# shellcheck disable=SC1091
. .venv-fastai/bin/activate
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q fastai -e ".[server]" "pytest>=8" "pytest-timeout>=2.3"
python -c "import fastai, torch, torchvision; print('fastai', fastai.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
python -m pytest -q -p no:cacheprovider -m fastai tests/integration/test_fastai.py

#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run the suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch (CPU tests of the export) from the release this platform ships, before anything pulls a newer one.
$PY -c "import torch, torchvision" 2>/dev/null || $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $PY -m pip install -q torch torchvision
$PY -m pip install -q -e '.[export,test]'
# The linter, the formatter and the type checker (versions pinned in the test extra) first, as they take
# seconds: any finding fails the run.
$PY -m ruff check .
$PY -m ruff format --check .
$PY -m mypy
# The Triton baseline's managed environment (Debian's python3.11 with a shared libpython).
if ! /usr/bin/python3.11 -c "import venv, ensurepip" >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv libpython3.11 >/dev/null
fi
# Headless Chromium, to render report.html as a reader's browser does (tests/test_report_html.py).
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
rayscale triton setup
if [ -f scripts/install_perf_analyzer.sh ]; then bash scripts/install_perf_analyzer.sh; fi

exec $PY -m pytest -q -m "not gpu" "$@"

#!/usr/bin/env bash
# Install Triton's perf_analyzer for `rayscale bench --client perf_analyzer`, unattended.
#
# The binary comes from the tritonclient 2.41.1 wheel (manylinux x86_64) and goes into
# ${RAYSCALE_CACHE_DIR:-~/.cache/rayscale}/perf_analyzer, beside the CUDA runtime it links
# (nvidia-cuda-runtime-cu12 from PyPI, no GPU needed); Debian's libb64-0d is installed with apt
# when missing (run as root). The current environment's packages are left alone. Idempotent:
# a second run only checks that `perf_analyzer --help` starts. Prints the binary's path.
#
# Usage: scripts/install_perf_analyzer.sh [CACHE_DIR]
set -euo pipefail

PYTHON="${PYTHON:-python3}"
exec "$PYTHON" - "$@" <<'PY'
import sys

from rayscale.errors import RayscaleError
from rayscale.perf_analyzer import ensure_perf_analyzer

try:
    install = ensure_perf_analyzer(sys.argv[1] if len(sys.argv) > 1 else None)
except RayscaleError as e:
    sys.exit(f"error: {e}")
print(install.binary)
PY

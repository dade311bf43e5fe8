#!/usr/bin/env bash
# Usage: tests/run_tests.sh [PYTEST_ARGS...]
# Runs the test suite, including the end-to-end debug run of the recipe. On first use it sets up tools/venv and
# the Debian packages (through path.sh), as ./run.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
. ./path.sh
exec python -m pytest tests "$@"

#!/usr/bin/env bash
# Usage: tests/run_tests.sh [PYTEST_ARGS...]
# Runs the test suite in two layers: the fast unit tests first (`-m "not slow"`, a few minutes), then the
# end-to-end debug run of the recipe and the Slurm cluster tests (`-m slow`; the debug run prints its stages as
# they start; tests/test_slurm.py installs slurm-wlm and munge when missing, as root). On first use it sets up
# tools/venv and the Debian packages (through path.sh), as ./run.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
. ./path.sh
# A layer that selects nothing (e.g. with -k) is not a failure: pytest's exit status 5.
layer() { python -m pytest tests "$@" || { local rc=$?; [ "$rc" -eq 5 ] || return "$rc"; }; }
layer -m "not slow" "$@"
layer -m slow "$@"

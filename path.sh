# Sourced by run.sh and local/*.sh: activates the recipe's Python environment (ESPnet convention).
__recipe_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "${__recipe_root}/tools/venv/.done" ]; then
  echo "[path.sh] setting up tools/venv (first use; a few minutes)" >&2
  "${__recipe_root}/tools/setup_venv.sh" || return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${__recipe_root}/tools/venv/bin/activate"
export PATH="${__recipe_root}/utils:${PATH}"
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# nltk (imported by espnet) tries to download data at start-up; there is no network for that.
export NLTK_DATA=${NLTK_DATA:-${__recipe_root}/tools/nltk_data}
unset __recipe_root

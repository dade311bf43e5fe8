#!/usr/bin/env bash
# Usage: egs2/synth/pate1/run.sh [any option of the shared recipe, e.g. --stage 3 --stop-stage 6]
# The embedded synthetic corpus as an egs2 recipe (ESPnet's convention: one folder per corpus whose run.sh calls
# the shared recipe with the corpus's own conf/ and local/data.sh). Outputs go to data/ dump/ exp/ beside this file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "${here}/../../../run.sh" --conf_dir "${here}/conf" --data_script "${here}/local/data.sh" \
  --datadir "${here}/data" --dumpdir "${here}/dump" --expdir "${here}/exp" --results "${here}/RESULTS.md" "$@"

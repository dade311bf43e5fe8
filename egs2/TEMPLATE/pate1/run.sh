#!/usr/bin/env bash
# Usage: egs2/<corpus>/pate1/run.sh [any option of the shared recipe, e.g. --stage 2 --stop-stage 2]
# A new corpus: copy this folder (cp -r egs2/TEMPLATE/pate1 egs2/<corpus>/pate1), write local/data.sh, size
# conf/ (README.md). This calls the shared recipe (../../../run.sh) with this folder's conf/ and local/data.sh;
# outputs go to data/ dump/ exp/ and RESULTS.md beside this file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "${here}/../../../run.sh" --conf_dir "${here}/conf" --data_script "${here}/local/data.sh" \
  --datadir "${here}/data" --dumpdir "${here}/dump" --expdir "${here}/exp" --results "${here}/RESULTS.md" "$@"

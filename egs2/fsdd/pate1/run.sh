#!/usr/bin/env bash
# Usage: egs2/fsdd/pate1/run.sh [any option of the shared recipe, e.g. --stage 3 --stop-stage 6]
# The recipe on real recordings: connected digits from the Free Spoken Digit Dataset (README.md beside this file).
# Outputs go to data/ dump/ exp/ beside this file. Six speakers allow an utterance-level privacy unit only, so
# teachers' shards and DP-SGD work per utterance (--partition_unit utterance); 20 teachers fit its 240 sensitive
# utterances. FSDD's speakers used different microphones: each utterance is normalised by its own statistics.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "${here}/../../../run.sh" --conf_dir "${here}/conf" --data_script "${here}/local/data.sh" \
  --datadir "${here}/data" --dumpdir "${here}/dump" --expdir "${here}/exp" --results "${here}/RESULTS.md" \
  --partition_unit utterance --num_teachers 20 --dpsgd_eps 8 --feats_normalize utterance_mvn "$@"

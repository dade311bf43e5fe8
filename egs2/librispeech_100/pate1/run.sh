#!/usr/bin/env bash
# Usage: egs2/librispeech_100/pate1/run.sh [any option of the shared recipe, e.g. --stage 3 --stop-stage 6]
# The GPU-scale setting: sensitive and public speakers of LibriSpeech train-clean-100 (README.md beside this file).
# Needs the corpus on disk (LIBRISPEECH in db.sh) and GPUs (--ngpu 1 per training job; cmd.sh names the job
# runner: point train_cmd at a cluster wrapper to run teachers, students and baselines there).
# Outputs go to data/ dump/ exp/ beside this file. `--debug true` uses the shared tiny configs (a smoke test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "${here}/../../../run.sh" --conf_dir "${here}/conf" --data_script "${here}/local/data.sh" \
  --datadir "${here}/data" --dumpdir "${here}/dump" --expdir "${here}/exp" --results "${here}/RESULTS.md" \
  --ngpu 1 --token_type bpe --nbpe 300 --partition_unit utterance --num_teachers 250 --teacher_valid_utts 200 "$@"

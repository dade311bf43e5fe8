#!/usr/bin/env bash
# Stage 1 of egs2/fsdd/pate1: connected-digit utterances from FSDD's isolated recordings, as Kaldi directories.
#
# Usage: local/data.sh [--config conf/corpus.yaml] [--out data] [--fsdd DIR]
#   --config  corpus YAML: seed, held-out speakers, utterances per set, digits per utterance, withheld words
#   --out     output folder: <out>/{public_labeled,sensitive,public_unlabeled,public_unlabeled_diff,dev,test}/
#             (wav.scp text utt2spk spk2utt utt2source), 16 kHz audio in <out>/wav/<set>/, <out>/withheld_words.txt
#   --fsdd    the FSDD folder (default: $FSDD from db.sh). Get it with
#             git clone https://github.com/Jakobovski/free-spoken-digit-dataset   (CC BY-SA 4.0; recordings/ is used)
#
# The `text` of public_unlabeled and public_unlabeled_diff is their true transcript, kept only to measure the
# quality of pseudo-labels; nothing may train on it. Same configuration and recordings, same bytes; a set whose
# .done matches is skipped on a rerun.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
config=${here}/conf/corpus.yaml
out=${here}/data
. "${here}/../../../db.sh"
fsdd=${FSDD}

help_message=$(sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//')
. "${here}/../../../utils/parse_options.sh"

[ -d "$fsdd" ] || { echo "$0: FSDD folder '${fsdd}' not found: set FSDD in db.sh or pass --fsdd DIR" >&2; exit 1; }
cmd="python -m espnet_pate.bin.prepare_fsdd --fsdd $fsdd --config $config --out $out"
echo "[local/data.sh] $cmd"
$cmd

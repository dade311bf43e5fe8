#!/usr/bin/env bash
# Stage 1 of egs2/librispeech_100/pate1: the six Kaldi directories from LibriSpeech in its own layout
# (<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt and <utt>.flac; wav.scp points at the FLACs).
#
# Usage: local/data.sh [--config conf/corpus.yaml] [--out data] [--librispeech DIR]
#   --config       splits and speaker fractions (conf/corpus.yaml; conf/corpus_debug.yaml for the tiny test corpus)
#   --out          output folder: <out>/{public_labeled,sensitive,public_unlabeled,public_unlabeled_diff,dev,test}/
#   --librispeech  the folder holding train-clean-100/ dev-clean/ test-clean/ train-other-500/ (default: LIBRISPEECH
#                  from db.sh). Get them from https://www.openslr.org/12 (CC BY 4.0) and unpack them there.
#
# The `text` of public_unlabeled and public_unlabeled_diff is their true transcript, kept only to measure the
# quality of pseudo-labels; nothing may train on it.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
config=${here}/conf/corpus.yaml
out=${here}/data
. "${here}/../../../db.sh"
librispeech=${LIBRISPEECH}

help_message=$(sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//')
. "${here}/../../../utils/parse_options.sh"

[ -d "$librispeech" ] || { echo "$0: LibriSpeech folder '${librispeech}' not found: set LIBRISPEECH in db.sh or pass --librispeech DIR" >&2; exit 1; }
cmd="python -m espnet_pate.bin.prepare_librispeech --librispeech $librispeech --config $config --out $out"
echo "[local/data.sh] $cmd"
$cmd

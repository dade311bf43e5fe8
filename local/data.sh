#!/usr/bin/env bash
# Stage 1 of the recipe: build the default synthetic corpus as Kaldi data directories.
#
# Usage: local/data.sh [--config conf/corpus.yaml] [--out data] [--nj 2]
#   --config  corpus YAML: seed, speakers and utterances per set (conf/corpus_debug.yaml builds in seconds)
#   --out     output folder: <out>/{public_labeled,sensitive,public_unlabeled,public_unlabeled_diff,dev,test}/
#             (wav.scp text utt2spk spk2utt spk2gender spk2voice utt2reqtype), audio in <out>/wav/<set>/,
#             and <out>/withheld_words.txt (words that public_labeled never holds)
#   --nj      synthesis jobs run at once
#
# The `text` of public_unlabeled and public_unlabeled_diff is their true transcript, kept only to measure the
# quality of pseudo-labels; nothing may train on it.
# Finished sets hold a .done marker and are skipped on a rerun; a set whose configuration changed is rebuilt.
# Needs the Debian packages espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox.
set -euo pipefail

config=conf/corpus.yaml
out=data
nj=2

while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --nj) nj="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown option $1 (see $0 --help)" >&2; exit 1 ;;
  esac
done

[ -f ./path.sh ] && . ./path.sh

cmd="python -m espnet_pate.bin.make_synth_corpus --config $config --out $out --nj $nj"
echo "[local/data.sh] $cmd"
$cmd

#!/usr/bin/env bash
# Stage 1 of the recipe for your corpus: write its six Kaldi data directories. This is the TEMPLATE's stub: it
# stops with a message until you replace the marked part with your corpus's preparation.
#
# Usage: local/data.sh --config conf/corpus.yaml --out data
#   --config  your corpus YAML (where the corpus lies, how to split it; run.sh passes conf/corpus_debug.yaml
#             with --debug true)
#   --out     output folder: write <out>/{dev,test,public_labeled,sensitive,public_unlabeled,public_unlabeled_diff}/
#
# Each directory in Kaldi format (https://kaldi-asr.org/doc/data_prep.html), every file sorted by its first
# field with `LC_ALL=C sort`:
#   wav.scp   <utt-id> <audio file>      one 16 kHz mono file per utterance (wav or flac; no pipes, no segments)
#   text      <utt-id> <transcript>      lowercase a-z, apostrophe, single spaces: digits and symbols spelled out
#                                        ("twenty five percent"), no punctuation, no casing
#   utt2spk   <utt-id> <speaker-id>      start utterance ids with the speaker id, so both sort the same way
#   spk2utt   <speaker-id> <utt-id>...   made from utt2spk
# The sets (README.md, "Your own data"); no speaker may be in two of them:
#   public_labeled         transcribed public speech: the public model, the token list, feature statistics
#   sensitive              transcribed private speech: the teachers' shards, DP-SGD, the non-private baseline
#   public_unlabeled       untranscribed public speech like the sensitive one, for the teachers to label; a text
#                          file, if any, is only used to measure the quality of the labels
#   public_unlabeled_diff  untranscribed public speech from another kind of source (the same rules)
#   dev, test              held-out speakers: dev validates (early stopping, checkpoints), both are scored
# Optional: <out>/withheld_words.txt, one word a line that the sensitive data holds and public_labeled never does
# (names, places); the public model then validates on dev without them (stage 2 writes dev_public, test_public).
# Stage 2 checks every directory and lists every problem; check one by hand with
#   python -m espnet_pate.bin.validate_data_dir data/sensitive --sample-rate 16000
set -euo pipefail

config=conf/corpus.yaml
out=data

while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "$0: unknown option $1 (see $0 --help)" >&2; exit 1 ;;
  esac
done

# ---- your corpus: replace from here to the end, e.g. with a call of your own preparation script:
#   python local/prepare_<corpus>.py --config "$config" --out "$out"
# (lhotse-style: a function that writes the directories and checks its own output; see
#  espnet_pate/data/kaldi_dir.py write_kaldi_dir for a writer that sorts and writes spk2utt.)
cat >&2 <<MSG
$0: not written yet: this is the TEMPLATE's stub for stage 1.
  Edit it to write the six Kaldi data directories of your corpus under ${out}/:
    dev test public_labeled sensitive public_unlabeled public_unlabeled_diff
  each with wav.scp text utt2spk spk2utt (16 kHz mono audio, lowercase transcripts, sorted files).
  Its usage block says what goes in each; the recipe's README.md ("Your own data") says why.
  Directories you made by hand: skip this stage with --stage 2.
MSG
exit 1

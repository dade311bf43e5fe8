#!/usr/bin/env bash
# Usage: local/train_baseline.sh --name NAME --nonprivate_config YAML --dpsgd_config YAML --dpsgd_head_config YAML [--dp_unit U]
#            [--ledger EXPDIR/privacy_ledger.jsonl --datadir data --dumpdir dump --expdir exp --token_type char|bpe
#             --nbpe N --ngpu N --feats_normalize global_mvn|utterance_mvn]
# Trains one stage-6 baseline into EXPDIR/NAME, the public model fine-tuned on all of DATADIR/sensitive: without
# DP (NAME = nonprivate), or with DP-SGD at target epsilon E (NAME = dpsgd_eps<E>: ESPnet's trainer with exact
# per-example clipping, Poisson sampling and noise calibrated before training; the privacy unit is --dp_unit), or
# with DP-SGD on the decoder and joint network only over the frozen public encoder's outputs, computed once per
# utterance (NAME = dpsgd_head_eps<E>: espnet_pate.bin.train_dpsgd_head, same plan and release). A repeat with
# fresh noise, paid for on its own, is NAME_seed<N>.
# DP-SGD runs against the sensitive data set's privacy ledger (--ledger, which must exist: run.sh creates it):
# refused before training if its planned cost cannot fit, recorded there when it finishes.
# A name per job, so that run.sh can train the baselines in parallel; local/train_asr.sh skips a finished one.
set -euo pipefail
name=""; nonprivate_config=""; dpsgd_config=""; dpsgd_head_config=""; dp_unit=utterance; ledger=""
datadir=data; dumpdir=dump; expdir=exp; token_type=char; nbpe=100; ngpu=0; feats_normalize=global_mvn
help_message=$(sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//')
. ./utils/parse_options.sh
[ -n "$name" ] && [ -n "$nonprivate_config" ] && [ -n "$dpsgd_config" ] || { echo "$help_message" >&2; exit 1; }

common=(--outdir "${expdir}/${name}" --train "${datadir}/sensitive" --init_param "${expdir}/public_only/valid.loss.ave.pth"
        --datadir "$datadir" --dumpdir "$dumpdir" --expdir "$expdir" --token_type "$token_type" --nbpe "$nbpe" --ngpu "$ngpu"
        --feats_normalize "$feats_normalize")
case "$name" in
  nonprivate)
    exec local/train_asr.sh --config "$nonprivate_config" "${common[@]}" ;;
  dpsgd_eps*|dpsgd_head_eps*)
    [ -n "$ledger" ] || ledger=${expdir}/privacy_ledger.jsonl
    eps=$(sed 's/^.*_eps//; s/_seed[0-9]*$//' <<< "$name")
    if [[ $name == dpsgd_head_eps* ]]; then  # the teachers' part over the public encoder's outputs, computed once
      [ -n "$dpsgd_head_config" ] || { echo "$0: ${name} needs --dpsgd_head_config" >&2; exit 1; }
      [ -f "${expdir}/${name}/.done" ] && { echo "skip ${expdir}/${name} (done)"; exit 0; }
      exec python -m espnet_pate.bin.train_dpsgd_head --public "${expdir}/public_only" --train "${datadir}/sensitive" \
        --valid "${datadir}/dev" --out "${expdir}/${name}" --config "$dpsgd_head_config" \
        --dp_target_epsilon "$eps" --dp_unit "$dp_unit" --dp_ledger "$ledger"
    fi
    exec local/train_asr.sh --config "$dpsgd_config" "${common[@]}" --train_module espnet_pate.bin.asr_transducer_dp_train \
      -- --dp_target_epsilon "$eps" --dp_unit "$dp_unit" --dp_ledger "$ledger" ;;
  *)
    echo "$0: unknown baseline '$name' (nonprivate, dpsgd_eps<E> or dpsgd_head_eps<E>)" >&2; exit 1 ;;
esac

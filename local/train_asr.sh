#!/usr/bin/env bash
# Usage: local/train_asr.sh --outdir DIR --config YAML --train DATA_DIR [--valid DATA_DIR] [--init_param PTH]
#            [--token_type char|bpe] [--nbpe N] [--feats_normalize global_mvn|utterance_mvn]
#            [--train_module espnet_pate.bin.asr_transducer_train]
#            [-- ESPNET_OPTIONS...]
# Trains one ESPnet transducer model (by default ESPnet's task with torchaudio's RNN-T loss; DP-SGD uses
# espnet_pate.bin.asr_transducer_dp_train) with stage 2's public token list of --token_type (default char) and
# the public feature statistics (utterance_mvn: each utterance's own), validating on --valid (default: dev).
# --config is a role config resolved over its base_config (conf/model.yaml) into DIR/train_config.yaml, the one
# file ESPnet's --config takes. Skips a finished model (DIR/.done) and resumes an interrupted one from its last
# checkpoint. Needs stage 2's outputs.
set -euo pipefail
outdir=""; config=""; train=""; valid=""; init_param=""; train_module=espnet_pate.bin.asr_transducer_train
datadir=data; dumpdir=dump; expdir=exp; token_type=char; nbpe=100; ngpu=0; feats_normalize=global_mvn
help_message=$(sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//')
extra=()
for i in $(seq $#); do [ "${!i}" = "--" ] && { extra=("${@:i+1}"); set -- "${@:1:i-1}"; break; }; done
. ./utils/parse_options.sh
[ -n "$outdir" ] && [ -n "$config" ] && [ -n "$train" ] || { echo "$help_message" >&2; exit 1; }
[ -f "$outdir/.done" ] && { echo "skip $outdir (done)"; exit 0; }
case "$feats_normalize" in
  global_mvn) normalize=(--normalize global_mvn --normalize_conf "stats_file=${expdir}/asr_stats_public/train/feats_stats.npz") ;;
  utterance_mvn) normalize=(--normalize utterance_mvn) ;;
  *) echo "$0: --feats_normalize must be global_mvn or utterance_mvn, got '${feats_normalize}'" >&2; exit 1 ;;
esac

case "$token_type" in
  char) token_dir=${dumpdir}/token_list/char; token_opts=(--token_type char) ;;
  bpe) token_dir=${dumpdir}/token_list/bpe_unigram${nbpe}; token_opts=(--token_type bpe --bpemodel "${token_dir}/bpe.model") ;;
  *) echo "$0: --token_type must be char or bpe, got '${token_type}'" >&2; exit 1 ;;
esac
[ -f "${token_dir}/tokens.txt" ] || { echo "$0: no ${token_dir}/tokens.txt: run stage 2 with --token_type ${token_type}" >&2; exit 1; }
[ -n "$valid" ] || valid=${datadir}/dev
shape_of() { echo "${dumpdir}/shapes/$(echo "${1#"${datadir}"/}" | tr '/' '_')/speech_shape"; }
shape=$(shape_of "$train"); valid_shape=$(shape_of "$valid")
for d in "$train" "$valid"; do
  [ -f "$(shape_of "$d")" ] || python -m espnet_pate.bin.make_shape_file "$d" "$(shape_of "$d")"
done
init=(); [ -n "$init_param" ] && init=(--init_param "$init_param")
mkdir -p "$outdir"
python -m espnet_pate.bin.resolve_config "$config" "${outdir}/train_config.yaml"
cmd=(python -m "$train_module"
  --config "${outdir}/train_config.yaml" --output_dir "$outdir" --ngpu "$ngpu" --resume true
  "${token_opts[@]}" --token_list "${token_dir}/tokens.txt"
  "${normalize[@]}"
  --train_data_path_and_name_and_type "${train}/wav.scp,speech,sound"
  --train_data_path_and_name_and_type "${train}/text,text,text"
  --train_shape_file "$shape"
  --valid_data_path_and_name_and_type "${valid}/wav.scp,speech,sound"
  --valid_data_path_and_name_and_type "${valid}/text,text,text"
  --valid_shape_file "$valid_shape"
  "${init[@]}" "${extra[@]}")
echo "# ${cmd[*]}"
"${cmd[@]}"
touch "$outdir/.done"

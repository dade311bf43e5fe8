#!/usr/bin/env bash
# espnet-pate recipe for the embedded synthetic corpus: differentially private RNN-T with PATE and DP-SGD.
#
# Usage: ./run.sh [options]                 (every option below; --help prints this block)
#   ./run.sh                                 # the default experiment, stages 1-9
#   ./run.sh --stage 3 --stop-stage 6        # from teacher training to the baselines
#   ./run.sh --debug true                    # tiny corpus and short training (what CI runs), a few minutes
#   ./run.sh --sweep full                    # the comparison across budgets, public sets and repeats (hours)
# Stages:
#   1  data preparation (local/data.sh): the synthetic corpus as Kaldi directories
#   2  validation of every directory; token list, feature statistics and the public model's held-out set
#      (dev without the withheld words) from public data only
#   3  public pretraining, partition of the sensitive data, one teacher per partition
#   4  noisy ensemble decoding of public_unlabeled into pseudo-transcripts (PATE)
#   5  student training on pseudo-transcripts (or on --student_text)
#   6  baselines on sensitive: DP-SGD at each --dpsgd_eps, and the non-private fine-tune
#   7  decoding and scoring of every system on dev and test: exp/*/RESULTS.md and RESULTS.md
#   8  privacy audits of every released model (operator diagnostics, never released): membership inference
#      (loss attack, offline LiRA with the public shadow teachers; utterance and speaker level; fails when an
#      attack beats a model's epsilon) and model inversion (conf/audit_inversion.yaml): exp/audit/RESULTS.md
#   9  model-zoo zips of the released systems with their privacy card: exp/packed/<system>.zip (seconds)
# A finished step leaves a .done marker; a rerun skips it. Every long step prints its exact command and logs
# under exp/. Options:
#   --stage N --stop-stage N   stages to run (default 1 and 9)
#   --debug true|false         use conf/*_debug.yaml (default false)
#   --nj N                     parallel jobs: teachers, students, baselines, decodings at once, or the threads of a
#                              step that runs alone (default 2); where training jobs run: cmd.sh's cmd_backend
#                              (local, or slurm: conf/slurm.conf)
#   --ngpu N                   GPUs per training job (default 0)
#   --num_teachers K           teachers (default 40; debug 4)
#   --teacher_trainable P      full | top | head: the part of the pretrained model a teacher trains (default head)
#   --teacher_training T       joint: all heads in one process (head only) | espnet: one training each (default joint)
#   --teacher_valid_utts N     teachers validate on N utterances of dev (default 50): K validations per epoch
#   --shadow_teachers true|false  also train K shadow teachers on speaker shards of public_labeled, the same way
#                              (default true): their agreement, surveyed on --survey_utts public utterances
#                              (default 100), plans stage 4's `queries: auto` from public information only
#   --partition_unit U         speaker | utterance (default speaker)
#   --dpsgd_parts "full head"  what stage 6's DP-SGD trains: the whole model (exp/dpsgd_eps<E>) and/or the teachers'
#                              part, decoder and joint network over the frozen public encoder (exp/dpsgd_head_eps<E>)
#   --dpsgd_eps "E1 E2"        target epsilons of stage 6's DP-SGD baselines (default "2 8", the budgets of
#                              conf/pate.yaml, so that both methods compare at equal epsilon; debug "8")
#   --pate_config YAML         stage 4's releases (default conf/pate.yaml; debug conf/pate_debug.yaml)
#   --label_sources "S1 S2"    the untranscribed public sets stage 4 labels and students learn from (default
#                              public_unlabeled; releases of another set S are named <run>_<S without public_unlabeled_>)
#   --repeats N                releases and DP-SGD models of each setting, each with fresh noise and each paid for in
#                              the ledger: <name>, <name>_seed2 .. <name>_seed<N> (default 1); RESULTS.md shows their
#                              mean and spread
#   --sweep default|full       full: the comparison of issue 10 with the settings above set to conf/pate_sweep.yaml
#                              (epsilon 1 2 4 8; plurality, GNMax, LNMax), --dpsgd_eps "0.1 1 2 4 8", both public
#                              sets, --repeats 3, and the ledger's budget raised (recorded) to conf/privacy_sweep.yaml;
#                              options given explicitly win (default: default)
#   --token_type T             char | bpe: the token inventory, from public_labeled text only (default char)
#   --nbpe N                   sentencepiece vocabulary size with --token_type bpe (default 100)
#   --feats_normalize N        global_mvn (statistics of public_labeled, stage 2) | utterance_mvn (each utterance
#                              by its own statistics: recordings from different microphones) (default global_mvn)
#   --score_teachers N         stage 7 decodes the first N teachers of each teacher set (default 5)
#   --audit_speakers N         stage 8's members: N evenly spaced speakers of sensitive with all their utterances
#                              (default 50; 0: all of sensitive): every audited and shadow model scores each member
#   --student_text FILE        transcripts for the student instead of stage 4's output (testing only)
#   --results FILE             the results table (default RESULTS.md; with --debug, <expdir>/RESULTS.md)
#   --datadir --dumpdir --expdir   output folders (default data dump exp; with --debug true data_debug dump_debug
#                              exp_debug, so a debug run never shares outputs with the default one)
#   --conf_dir DIR --data_script SCRIPT   a corpus's configs and stage-1 script (egs2/<corpus>/pate1/run.sh)
set -euo pipefail
# The whole script is one block, read before it runs: editing run.sh during a run cannot change that run.
{
cd "$(dirname "$0")"

stage=1
stop_stage=9
debug=false
nj=2
ngpu=0
num_teachers=""
teacher_trainable=head
teacher_training=joint
teacher_valid_utts=50
shadow_teachers=true
survey_utts=100
partition_unit=speaker
dpsgd_eps=""
dpsgd_parts="full head"
pate_config=""
label_sources=""
repeats=""
sweep=default
token_type=char
nbpe=100
feats_normalize=global_mvn
score_teachers=5
audit_speakers=50
student_text=""
results=""
conf_dir=conf
data_script=local/data.sh
datadir=""
dumpdir=""
expdir=""
help_message=$(sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//')

. ./utils/parse_options.sh
. ./path.sh
. ./cmd.sh

sfx=""; $debug && sfx=_debug
datadir=${datadir:-data${sfx}}; dumpdir=${dumpdir:-dump${sfx}}; expdir=${expdir:-exp${sfx}}
[ -n "$num_teachers" ] || { $debug && num_teachers=4 || num_teachers=40; }
# The sweep presets; options given on the command line win.
privacy_config=${conf_dir}/privacy${sfx}.yaml
set_budget=()
case "$sweep" in
  default) [ -n "$dpsgd_eps" ] || { $debug && dpsgd_eps=8 || dpsgd_eps="2 8"; } ;;
  full)
    pate_config=${pate_config:-${conf_dir}/pate_sweep${sfx}.yaml}
    [ -n "$dpsgd_eps" ] || { $debug && dpsgd_eps="50 400" || dpsgd_eps="0.1 1 2 4 8"; }
    label_sources=${label_sources:-public_unlabeled public_unlabeled_diff}
    repeats=${repeats:-3}
    # A sweep releases far more than one experiment: its ledger budget is raised, visibly (a budget record).
    privacy_config=${conf_dir}/privacy_sweep${sfx}.yaml; set_budget=(--set-budget) ;;
  *) echo "run.sh: --sweep takes default or full, not '${sweep}'" >&2; exit 2 ;;
esac
pate_config=${pate_config:-${conf_dir}/pate${sfx}.yaml}
label_sources=${label_sources:-public_unlabeled}
repeats=${repeats:-1}
[[ $repeats =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --repeats takes a positive integer, not '${repeats}'" >&2; exit 2; }
python=python
# A step that runs alone (the public model, the teacher heads, the labelling, the audits) gets the --nj cores as
# threads; parallel jobs get one each (path.sh). Two threads train 1.37x faster on 2 cores (README, "Time here").
solo=(env "OMP_NUM_THREADS=${nj}")
log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"; }
last_stage=9
if ! [[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || ((stage < 1 || stop_stage > last_stage || stage > stop_stage)); then
  echo "run.sh: invalid stage range --stage ${stage} --stop-stage ${stop_stage}: stages are 1-${last_stage}, start <= stop" >&2
  exit 2
fi
# need PATH STAGE: stop with a clear message when an input that stage STAGE makes is missing.
need() { [ -e "$1" ] || { log "error: $1 is missing: run stage $2 first (./run.sh --stage $2 --stop-stage $2)"; exit 1; }; }
# Runs "$@" unless marker $1 exists; prints the command first so it can be copied and rerun by hand.
run_step() {
  local done_marker=$1; shift
  if [ -f "$done_marker" ]; then log "skip (done: $done_marker)"; return 0; fi
  log "run: $*"
  "$@"
  mkdir -p "$(dirname "$done_marker")"; touch "$done_marker"
}

case "$token_type" in
  char) token_dir=${dumpdir}/token_list/char; token_opts=(--token_type char) ;;
  bpe) token_dir=${dumpdir}/token_list/bpe_unigram${nbpe}; token_opts=(--token_type bpe --bpemodel "${token_dir}/bpe.model") ;;
  *) log "error: --token_type must be char or bpe, got '${token_type}'"; exit 1 ;;
esac
token_list=${token_dir}/tokens.txt
# The public model validates (early stopping, best checkpoints) on held-out utterances it can know: dev without
# the words public_labeled never holds (a corpus that lists them: stage 1 writes the list). A loss dominated by
# those words rises while WER falls.
set_public_valid() {
  public_valid=${datadir}/dev
  [ -f "${datadir}/withheld_words.txt" ] && public_valid=${datadir}/dev_public
  return 0
}
stats_dir=${expdir}/asr_stats_public
shape_dir=${dumpdir}/shapes
decode_config=${conf_dir}/decode_transducer.yaml
# One privacy ledger for the sensitive data set: every release from it composes there, within the budget of
# ${privacy_config} (its header fixes the budget; espnet_pate/privacy/ledger.py).
ledger=${expdir}/privacy_ledger.jsonl
all_sets="public_labeled sensitive public_unlabeled public_unlabeled_diff dev test"
# source_suffix SET: what the names of SET's releases and students end with ("" for public_unlabeled, _diff for
# public_unlabeled_diff, _<SET> for another set).
source_suffix() {
  case "$1" in public_unlabeled) echo "" ;; public_unlabeled_*) echo "_${1#public_unlabeled_}" ;; *) echo "_$1" ;; esac
}
# with_repeats NAME...: each NAME, then NAME_seed2 .. NAME_seed<repeats> (separate releases with fresh noise).
with_repeats() {
  local n r
  for n in "$@"; do echo "$n"; for ((r = 2; r <= repeats; r++)); do echo "${n}_seed${r}"; done; done
}

# unfinished LIST PREFIX NAME...: sets todo=(the NAMEs whose model PREFIX<NAME> has no .done marker), writes them
# to LIST one a line, and logs the others as skipped. Parallel jobs get only unfinished models (a job's log would
# replace a finished one's): `${train_cmd} JOB=1:${#todo[@]} LOG utils/run_listed.sh VAR LIST JOB ...` trains the
# model on line JOB of LIST (cmd.sh's runners, like Kaldi's, number jobs 1..N).
unfinished() {
  local list=$1 prefix=$2 n; shift 2; todo=()
  for n in "$@"; do
    if [ -f "${prefix}${n}/.done" ]; then log "skip (done: ${prefix}${n}/.done)"; else todo+=("$n"); fi
  done
  mkdir -p "$(dirname "$list")"
  printf '%s\n' "${todo[@]}" > "$list"
}

train_opts="--datadir $datadir --dumpdir $dumpdir --expdir $expdir --token_type $token_type --nbpe $nbpe --ngpu $ngpu"
train_opts+=" --feats_normalize $feats_normalize"
# train_asr OUTDIR CONFIG TRAIN_DIR [--init_param PTH]: one model, logged to OUTDIR/train.log.
train_asr() {
  local outdir=$1 config=$2 train=$3; shift 3
  [ -f "${outdir}/.done" ] && { log "skip (done: ${outdir}/.done)"; return 0; }
  log "train ${outdir}: local/train_asr.sh --outdir $outdir --config $config --train $train $train_opts $*"
  ${train_cmd} --gpu "$ngpu" "${outdir}/train.log" "${solo[@]}" local/train_asr.sh --outdir "$outdir" --config "$config" --train "$train" $train_opts "$@"
}

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: data preparation (${data_script}, ${conf_dir}/corpus${sfx}.yaml)"
  "$data_script" --config "${conf_dir}/corpus${sfx}.yaml" --out "$datadir"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: validation; token list (${token_type}) and feature statistics from public_labeled only"
  for s in $all_sets; do need "${datadir}/${s}/wav.scp" 1; done
  # Transcripts must use the characters of the public token list once it exists, before that lowercase a-z,
  # apostrophe and single spaces. Every directory is checked, then every problem of all of them stops the stage.
  token_list_opt=(); [ -f "$token_list" ] && token_list_opt=(--token_list "$token_list")
  invalid=""
  for s in $all_sets; do
    no_text=""; [[ $s == public_unlabeled* ]] && no_text=--no-text
    ${python} -m espnet_pate.bin.validate_data_dir "${datadir}/${s}" --sample-rate 16000 $no_text "${token_list_opt[@]}" \
      || invalid+=" ${datadir}/${s}"
  done
  [ -z "$invalid" ] || { log "error: invalid data directories:${invalid} (every problem is listed above)"; exit 1; }
  mkdir -p "$token_dir"
  run_step "${token_dir}/.done" ${python} -m espnet_pate.bin.train_tokenizer \
    --text "${datadir}/public_labeled/text" --token-type "$token_type" --vocab-size "$nbpe" --out-dir "$token_dir"
  set_public_valid
  held_out_public=""
  if [ "$public_valid" != "${datadir}/dev" ]; then
    # dev_public validates the public model; test_public measures it (README), never chosen on
    for s in dev test; do
      run_step "${datadir}/${s}_public/.done" ${python} -m espnet_pate.bin.exclude_words_data_dir "${datadir}/${s}" \
        "${datadir}/withheld_words.txt" "${datadir}/${s}_public"
    done
    held_out_public="dev_public test_public"
  fi
  for s in $all_sets $held_out_public; do
    run_step "${shape_dir}/${s}/.done" ${python} -m espnet_pate.bin.make_shape_file "${datadir}/${s}" "${shape_dir}/${s}/speech_shape"
  done
  # Feature statistics (global MVN) from public_labeled alone (train/feats_stats.npz): statistics of sensitive
  # audio would leak it. ESPnet also needs a validation set here; its statistics are not used.
  run_step "${stats_dir}/.done" ${train_cmd} "${stats_dir}/collect_stats.log" \
    ${python} -m espnet_pate.bin.asr_transducer_train --collect_stats true \
      --config "${conf_dir}/model${sfx}.yaml" --output_dir "$stats_dir" --ngpu 0 \
      "${token_opts[@]}" --token_list "$token_list" \
      --train_data_path_and_name_and_type "${datadir}/public_labeled/wav.scp,speech,sound" \
      --train_data_path_and_name_and_type "${datadir}/public_labeled/text,text,text" \
      --train_shape_file "${shape_dir}/public_labeled/speech_shape" \
      --valid_data_path_and_name_and_type "${datadir}/dev/wav.scp,speech,sound" \
      --valid_data_path_and_name_and_type "${datadir}/dev/text,text,text" \
      --valid_shape_file "${shape_dir}/dev/speech_shape"
fi

shards_dir=${datadir}/sensitive_${partition_unit}_k${num_teachers}
teachers_dir=${expdir}/teachers_${teacher_trainable}_k${num_teachers}
shadow_shards_dir=${datadir}/public_labeled_${partition_unit}_k${num_teachers}
shadow_dir=${expdir}/shadow_teachers_${teacher_trainable}_k${num_teachers}
# train_teachers SHARDS OUTDIR: one teacher per shard (OUTDIR/teacher_<k>), from the public model.
train_teachers() {
  local shards=$1 out=$2
  if [ "$teacher_training" = joint ] && [ "$teacher_trainable" = head ]; then
    # Every head in one process over the public encoder's cached outputs; resumes by epoch, skips when done.
    log "teachers (${num_teachers} heads together): ${out}/teacher_{0..$((num_teachers - 1))}" \
      "(progress: tail -f ${out}/log/train_teacher_heads.log)"
    ${train_cmd} "${out}/log/train_teacher_heads.log" "${solo[@]}" ${python} -m espnet_pate.bin.train_teacher_heads \
      --public "${expdir}/public_only" --shards "$shards" --num-teachers "$num_teachers" --valid "$teacher_valid" \
      --out "$out" --config "${conf_dir}/train_teacher_heads${sfx}.yaml"
  else
    [ "$teacher_training" = espnet ] || log "--teacher_training joint trains heads only: ${teacher_trainable} teachers train with espnet"
    # Teachers train in parallel (--nj), the unfinished ones of teacher_0 .. teacher_{K-1} (named by their shard's
    # index); an interrupted one resumes from its checkpoint.
    unfinished "${out}/log/teacher_list" "${out}/teacher_" $(seq 0 $((num_teachers - 1)))
    [ ${#todo[@]} -gt 0 ] || return 0
    log "teachers: ${todo[*]/#/${out}/teacher_} (logs: ${out}/log/teacher.<k>.log)"
    ${train_cmd} --max-jobs-run "$nj" --gpu "$ngpu" JOB=1:${#todo[@]} "${out}/log/train_teacher.JOB.log" \
      utils/run_listed.sh TEACHER "${out}/log/teacher_list" JOB "${out}/log/teacher.TEACHER.log" \
        local/train_asr.sh --outdir "${out}/teacher_TEACHER" --config "${conf_dir}/train_teacher_${teacher_trainable}${sfx}.yaml" \
          --train "${shards}/shard_TEACHER" --valid "$teacher_valid" --init_param "${expdir}/public_only/valid.loss.ave.pth" $train_opts
  fi
}
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: public pretraining, partition, ${num_teachers} teachers (trainable: ${teacher_trainable})"
  need "${stats_dir}/.done" 2
  set_public_valid
  train_asr "${expdir}/public_only" "${conf_dir}/train_pretrain${sfx}.yaml" "${datadir}/public_labeled" --valid "$public_valid"
  ${python} -m espnet_pate.bin.privacy_info "${expdir}/public_only" --epsilon 0 --delta 0 --mechanism public_only \
    --note "trained on public_labeled only"
  ${python} -m espnet_pate.bin.partition_data_dir "${datadir}/sensitive" "$shards_dir" \
    --num-shards "$num_teachers" --unit "$partition_unit"
  teacher_valid=${datadir}/dev_${teacher_valid_utts}
  run_step "${teacher_valid}/.done" ${python} -m espnet_pate.bin.subset_data_dir "${datadir}/dev" "$teacher_valid_utts" "$teacher_valid"
  run_step "${shape_dir}/${teacher_valid##*/}/.done" ${python} -m espnet_pate.bin.make_shape_file "$teacher_valid" \
    "${shape_dir}/${teacher_valid##*/}/speech_shape"
  [[ $teacher_training =~ ^(joint|espnet)$ ]] || { log "error: --teacher_training joint|espnet, not '${teacher_training}'"; exit 1; }
  train_teachers "$shards_dir" "$teachers_dir"
  for ((k = 0; k < num_teachers; k++)); do
    ${python} -m espnet_pate.bin.privacy_info "${teachers_dir}/teacher_${k}" --mechanism teacher \
      --note "trained without DP on one shard of sensitive: never released"
  done
  if $shadow_teachers; then
    # Shadow teachers: the same training on speaker shards of public_labeled (balanced: their partition is public).
    # Their agreement stands in for the real teachers' when stage 4 plans its queries (PRIVACY.md: settings are
    # public); the real teachers' agreement never sizes anything.
    ${python} -m espnet_pate.bin.partition_data_dir "${datadir}/public_labeled" "$shadow_shards_dir" \
      --num-shards "$num_teachers" --unit "$partition_unit" --assignment greedy
    train_teachers "$shadow_shards_dir" "$shadow_dir"
  fi
fi

pate_dir=${expdir}/pate_${teacher_trainable}_k${num_teachers}
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "Stage 4: noisy ensemble labelling of ${label_sources} (${pate_config}, ${repeats} repeat(s)) into ${pate_dir}"
  need "${teachers_dir}/teacher_$((num_teachers - 1))/valid.loss.ave.pth" 3
  ! $shadow_teachers || need "${shadow_dir}/teacher_$((num_teachers - 1))/valid.loss.ave.pth" 3
  ${python} -m espnet_pate.bin.privacy_ledger init --ledger "$ledger" --config "$privacy_config" "${set_budget[@]}"
  for source in $label_sources; do
    need "${datadir}/${source}/wav.scp" 1
    suffix=$(source_suffix "$source")
    # Every release is recorded in ${ledger} before its text is written: a rerun spends nothing.
    cmd=("${solo[@]}" ${python} -m espnet_pate.bin.pate_label --config "$pate_config" --teachers "$teachers_dir"
         --data "${datadir}/${source}" --out "$pate_dir" --public-model "${expdir}/public_only"
         --partition-manifest "${shards_dir}/manifest.json" --ledger "$ledger" --ledger-config "$privacy_config"
         --name-suffix "$suffix" --repeats "$repeats")
    if $shadow_teachers; then
      # The shadow teachers' noise-free agreement on utterances of this public set: public, it plans `queries: auto`.
      run_step "${pate_dir}/.shadow_survey${suffix}.done" "${solo[@]}" ${python} -m espnet_pate.bin.pate_label --survey "$survey_utts" \
        --shadow --teachers "$shadow_dir" --data "${datadir}/${source}" --out "$pate_dir" --name-suffix "$suffix" \
        --public-model "${expdir}/public_only" --unit "$partition_unit" --withheld-words "${datadir}/withheld_words.txt"
      cmd+=(--plan-survey "${pate_dir}/agreement_survey${suffix}.json")
    fi
    log "run: ${cmd[*]}"
    "${cmd[@]}"
  done
  # Operator diagnostics, after the releases and never read by them: how the real teachers agree, split by
  # whether the utterance holds a withheld word (${pate_dir}/operator_diagnostics/agreement_survey.json).
  run_step "${pate_dir}/.operator_survey.done" "${solo[@]}" ${python} -m espnet_pate.bin.pate_label --survey "$survey_utts" \
    --teachers "$teachers_dir" --data "${datadir}/public_unlabeled" --out "$pate_dir" \
    --public-model "${expdir}/public_only" --unit "$partition_unit" --withheld-words "${datadir}/withheld_words.txt"
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "Stage 5: students on ${student_text:-the pseudo-transcripts of stage 4 and the audio they label}"
  need "${expdir}/public_only/.done" 3
  if [ -n "$student_text" ]; then
    texts=("$student_text")
  else
    mapfile -t texts < <(find "$pate_dir" -mindepth 2 -maxdepth 2 -name text | sort)
    [ ${#texts[@]} -gt 0 ] || { log "error: no pseudo-transcripts under ${pate_dir}: run stage 4 first"; exit 1; }
  fi
  names=()
  for text in "${texts[@]}"; do
    name=$(basename "$(dirname "$text")")
    # A release can label nothing (every query refused or the budget spent at once): no student then.
    [ -s "$text" ] || { log "skip student_${name}: ${text} labels no utterance"; continue; }
    # the audio of the public set the release labelled (its privacy.json's public_data: RESULTS.md's source)
    source_opts=(--release "$(dirname "$text")" --datadir "$datadir")
    [ -n "$student_text" ] && source_opts=("${datadir}/public_unlabeled" "$text")
    run_step "${datadir}/student_${name}/.done" ${python} -m espnet_pate.bin.make_student_data \
      "${source_opts[@]}" "${datadir}/student_${name}"
    names+=("$name")
  done
  unfinished "${expdir}/log/student_list" "${expdir}/student_" "${names[@]}"
  if [ ${#todo[@]} -gt 0 ]; then
    # Students train in parallel (--nj); an interrupted one resumes from its checkpoint.
    log "students: ${todo[*]/#/${expdir}/student_} (logs: ${expdir}/student_*/train.log)"
    ${train_cmd} --max-jobs-run "$nj" --gpu "$ngpu" JOB=1:${#todo[@]} "${expdir}/log/train_student.JOB.log" \
      utils/run_listed.sh STUDENT "${expdir}/log/student_list" JOB "${expdir}/student_STUDENT/train.log" \
        local/train_asr.sh --outdir "${expdir}/student_STUDENT" --config "${conf_dir}/train_student${sfx}.yaml" \
          --train "${datadir}/student_STUDENT" --init_param "${expdir}/public_only/valid.loss.ave.pth" $train_opts
  fi
  for text in "${texts[@]}"; do
    name=$(basename "$(dirname "$text")")
    [ -f "${expdir}/student_${name}/.done" ] || continue
    # The student sees sensitive data only through the released labels: it inherits their privacy claim.
    if [ -f "$(dirname "$text")/privacy.json" ]; then
      ${python} -m espnet_pate.bin.privacy_info "${expdir}/student_${name}" --inherit "$(dirname "$text")"
    else
      ${python} -m espnet_pate.bin.privacy_info "${expdir}/student_${name}" --mechanism "transcripts:${text}" \
        --note "trained on the given transcripts, not on a privacy mechanism's output"
    fi
  done
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  # The public model fine-tuned on all of sensitive: without DP (epsilon infinite), and with DP-SGD once per
  # target epsilon (local/train_baseline.sh). Each DP-SGD run is checked against the ledger before it trains
  # (refused if its planned cost cannot fit), records its model there when it finishes, and writes its own
  # privacy.json, dp_report.json and config.yaml's dp_report; an interrupted run resumes from its checkpoint with
  # the accountant's state. The privacy unit follows --partition_unit, so that DP-SGD and PATE are compared at the
  # same unit.
  baselines=(nonprivate); dp_dirs=()
  for part in $dpsgd_parts; do
    case "$part" in full) prefix=dpsgd ;; head) prefix=dpsgd_head ;;
      *) log "error: --dpsgd_parts takes full and/or head, not '${part}'"; exit 2 ;; esac
    for name in $(with_repeats $(printf "${prefix}_eps%s " $dpsgd_eps)); do
      baselines+=("$name"); dp_dirs+=("${expdir}/${name}")
    done
  done
  log "Stage 6: baselines on sensitive (${partition_unit} unit): ${baselines[*]}; ledger ${ledger}"
  need "${expdir}/public_only/.done" 3
  ${python} -m espnet_pate.bin.privacy_ledger init --ledger "$ledger" --config "$privacy_config" "${set_budget[@]}"
  unfinished "${expdir}/log/baseline_list" "${expdir}/" "${baselines[@]}"
  if [ ${#todo[@]} -gt 0 ]; then
    log "training in parallel (--nj ${nj}): ${todo[*]/#/${expdir}/} (logs: ${expdir}/<baseline>/train.log)"
    ${train_cmd} --max-jobs-run "$nj" --gpu "$ngpu" JOB=1:${#todo[@]} "${expdir}/log/train_baseline.JOB.log" \
      utils/run_listed.sh BASELINE "${expdir}/log/baseline_list" JOB "${expdir}/BASELINE/train.log" \
        local/train_baseline.sh --name BASELINE --nonprivate_config "${conf_dir}/train_nonprivate${sfx}.yaml" \
          --dpsgd_config "${conf_dir}/train_dpsgd${sfx}.yaml" --dpsgd_head_config "${conf_dir}/train_dpsgd_head${sfx}.yaml" \
          --dp_unit "$partition_unit" --ledger "$ledger" $train_opts
  fi
  ${python} -m espnet_pate.bin.privacy_info "${expdir}/nonprivate" --epsilon inf --mechanism none \
    --unit utterance --note "fine-tuned on all of sensitive without DP"
  # Models trained before they recorded themselves are recorded here; the others are found and not paid twice.
  ${python} -m espnet_pate.bin.privacy_ledger record-dpsgd --ledger "$ledger" "${dp_dirs[@]}"
  for dp_dir in "${dp_dirs[@]}"; do
    [ -f "${dp_dir}/privacy.json" ] || { log "error: no ${dp_dir}/privacy.json (see ${dp_dir}/train.log)"; exit 1; }
  done
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "Stage 7: decoding and scoring on dev and test"
  # Every trained system; of each teacher set only teacher_0 .. teacher_{N-1} (--score_teachers): K teachers
  # would cost K decodings for a WER range that a few of them show.
  systems=$(find "$expdir" -mindepth 1 -maxdepth 3 -name valid.loss.ave.pth -printf '%h\n' | sort -V |
            grep -v '/shadow_teachers_' |
            awk -v n="$score_teachers" '!match($0, /\/teacher_[0-9]+$/) || substr($0, RSTART + 9) + 0 < n')
  [ -n "$results" ] || { $debug && results=${expdir}/RESULTS.md || results=RESULTS.md; }
  cmd=(${python} -m espnet_pate.bin.decode_and_score --decode-config "$decode_config" --data-dir "$datadir"
       --sets dev test --exp-root "$expdir" --results "$results" --nj "$nj" --ledger "$ledger")
  # The default corpus lists the words public_labeled never holds: their recall shows what sensitive data taught.
  [ -f "${datadir}/withheld_words.txt" ] && cmd+=(--keywords "${datadir}/withheld_words.txt")
  cmd+=($systems)
  log "run: ${cmd[*]}"
  "${cmd[@]}"
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  # Attacks on the sensitive data: their results (and the evaluation-only speaker classifier) are operator
  # diagnostics in ${expdir}/audit/, kept apart from the released claims. Members: speakers of sensitive
  # (--audit_speakers); non-members: test (dev validates the baselines and teachers, so it is not unseen). A
  # violated bound stops here (exit 3).
  audit_dir=${expdir}/audit
  log "Stage 8: privacy audits of the released models under ${expdir} into ${audit_dir}"
  need "${expdir}/public_only/privacy.json" 3
  [ -f "${shadow_dir}/teacher_0/valid.loss.ave.pth" ] || { log "error: LiRA's shadow models ${shadow_dir} are missing:" \
    "run stage 3 with --shadow_teachers true"; exit 1; }
  # A model or claim newer than an audit's marker (a new student, a retrained baseline) means that audit reruns;
  # likelihoods already computed are reused (exp/audit/membership/likelihoods/).
  for marker in "${audit_dir}/membership/.done" "${audit_dir}/inversion/.done"; do
    [ -f "$marker" ] && [ -n "$(find "$expdir" -mindepth 2 -maxdepth 2 \( -name valid.loss.ave.pth -o -name privacy.json \) \
      -newer "$marker" -print -quit)" ] && { log "models changed since ${marker}: rerunning"; rm -f "$marker"; }
  done
  members=${datadir}/sensitive
  if [ "$audit_speakers" -gt 0 ]; then
    # a public choice (speaker ids in sorted order), made before any model is scored
    members=${datadir}/sensitive_spk${audit_speakers}
    run_step "${members}/.done" ${python} -m espnet_pate.bin.subset_data_dir --speakers "${datadir}/sensitive" \
      "$audit_speakers" "$members"
  fi
  run_step "${audit_dir}/membership/.done" "${solo[@]}" ${python} -m espnet_pate.bin.audit_membership --exp-root "$expdir" \
    --members "$members" --nonmembers "${datadir}/test" --shadow-models "$shadow_dir" \
    --out "${audit_dir}/membership"
  run_step "${audit_dir}/inversion/.done" "${solo[@]}" ${python} -m espnet_pate.bin.audit_inversion --exp-root "$expdir" \
    --members "$members" --out "${audit_dir}/inversion" --config "${conf_dir}/audit_inversion${sfx}.yaml"
  [ -n "$results" ] || { $debug && results=${expdir}/RESULTS.md || results=RESULTS.md; }
  ${python} -m espnet_pate.bin.audit_report --audit-dir "$audit_dir" --results "$results"
fi

if [ "$stage" -le 9 ] && [ "$stop_stage" -ge 9 ]; then
  log "Stage 9: model-zoo packs with a privacy card into ${expdir}/packed/"
  # Every system directly under ${expdir}; pack_model refuses (exit 2, with the reason) what may not be released:
  # teachers, the non-private fine-tune, anything without a mechanism. A zip newer than its model, its claim and
  # the ledger is finished (a new release in the ledger changes every card's composed cost).
  for model in $(find "$expdir" -mindepth 2 -maxdepth 2 -name valid.loss.ave.pth | sort -V); do
    system=$(dirname "$model"); zip=${expdir}/packed/$(basename "$system").zip
    if [ "$zip" -nt "$model" ] && [ "$zip" -nt "${system}/privacy.json" ] && [ "$zip" -nt "$ledger" ]; then
      log "skip (done: ${zip})"; continue
    fi
    cmd=(${python} -m espnet_pate.bin.pack_model "$system" --out "$zip" --ledger "$ledger")
    log "run: ${cmd[*]}"
    rc=0; "${cmd[@]}" || rc=$?
    [ "$rc" -eq 2 ] && { log "not packed: ${system} (refused: the reason is above)"; continue; }
    [ "$rc" -eq 0 ] || exit "$rc"
  done
fi
log "Finished stages ${stage}-${stop_stage}"
exit 0
}

#!/usr/bin/env bash
# Usage: utils/run_local.sh [--max-jobs-run N] [--OPTION VALUE ...] [JOB=1:N | JOB=K] LOGFILE COMMAND...
# Local back end of cmd.sh (Kaldi's run.pl contract): runs COMMAND once, or once per JOB in 1..N (a start of 1
# or more) with JOB replaced by the index in LOGFILE and COMMAND; writes each job's command, output and exit
# status to its log, runs at most N jobs at once, and fails if any job failed, naming its log. Other options
# (--mem, --num_threads, --gpu, --time, --config: cluster resources, see utils/slurm.sh) are accepted and ignored.
set -u
usage() { sed -n '2,6p' "$0" >&2; exit 1; }
max_jobs=1
while [[ ${1:-} == --* ]]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --max-jobs-run) max_jobs=$2 ;;
    *) ;;  # a cluster resource: nothing to reserve on this machine
  esac
  shift 2
done
[[ $max_jobs =~ ^[1-9][0-9]*$ ]] || { echo "$0: --max-jobs-run takes a number of 1 or more, got '${max_jobs}'" >&2; exit 1; }
values=(1); jobvar=""
if [[ ${1:-} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
  bad_range() { echo "$0: invalid job range '$1': Kaldi's JOB=1:N or JOB=K, indices from 1" >&2; exit 1; }
  [[ $1 =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)(:([0-9]+))?$ ]] || bad_range "$1"
  jobvar=${BASH_REMATCH[1]}; start=$((10#${BASH_REMATCH[2]})); end=$((10#${BASH_REMATCH[4]:-${BASH_REMATCH[2]}}))
  ((start >= 1 && start <= end)) || bad_range "$1"
  values=($(seq "$start" "$end")); shift
fi
[ $# -ge 2 ] || usage
log_tpl=$1; shift
run_one() {
  local i=$1; shift
  local log=$log_tpl args=("$@")
  if [ -n "$jobvar" ]; then
    log=${log_tpl//$jobvar/$i}
    args=("${args[@]//$jobvar/$i}")
  fi
  mkdir -p "$(dirname "$log")"
  {
    echo "# ${args[*]}"
    echo "# Started at $(date)"
    # Under Slurm (utils/slurm.sh runs each job through this script): where and as which job it ran.
    [ -z "${SLURM_JOB_ID:-}" ] ||
      echo "# Running on $(hostname) as Slurm job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"
  } > "$log"
  local t0=$SECONDS
  "${args[@]}" >> "$log" 2>&1
  local rc=$?
  { echo "# Accounting: time=$((SECONDS - t0)) threads=1"; echo "# Ended (code $rc) at $(date)"; } >> "$log"
  # progress on the terminal: parallel jobs otherwise write only to their logs
  [ ${#values[@]} -le 1 ] || echo "$(date '+%Y-%m-%dT%H:%M:%S') job ${i} of ${#values[@]} ended (code ${rc}, $((SECONDS - t0)) s): ${log}"
  return $rc
}
pids=(); logs=()
for i in "${values[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do wait -n || true; done
  run_one "$i" "$@" &
  pids+=($!); logs+=("${log_tpl//${jobvar:-@@none@@}/$i}")
done
failed=0
for k in "${!pids[@]}"; do
  if ! wait "${pids[$k]}"; then echo "$0: job failed, see ${logs[$k]}" >&2; failed=1; fi
done
exit $failed

#!/usr/bin/env bash
# Usage: utils/run_local.sh [--max-jobs-run N] [JOB=1:K | JOB=v1,v2,...] LOGFILE COMMAND...
# Local stand-in for Kaldi's run.pl: runs COMMAND (once, or once per JOB value with JOB replaced in the log
# name and the command: the indices 1..K, or the listed words), writes each job's output and exit status to its
# log, runs at most N jobs at once, and fails if any job failed, naming its log.
set -u
max_jobs=1
if [ "${1:-}" = "--max-jobs-run" ]; then max_jobs=$2; shift 2; fi
values=(1); jobvar=""
if [[ "${1:-}" =~ ^([A-Za-z_]+)=([0-9]+):([0-9]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]}; values=($(seq "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}")); shift
elif [[ "${1:-}" =~ ^([A-Za-z_]+)=([^=[:space:]]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]}; IFS=, read -r -a values <<< "${BASH_REMATCH[2]}"; shift
fi
[ $# -ge 2 ] || { sed -n '2,5p' "$0" >&2; exit 1; }
log_tpl=$1; shift
run_one() {
  local i=$1; shift
  local log=$log_tpl args=("$@")
  if [ -n "$jobvar" ]; then
    log=${log_tpl//$jobvar/$i}
    args=("${args[@]//$jobvar/$i}")
  fi
  mkdir -p "$(dirname "$log")"
  { echo "# ${args[*]}"; echo "# Started at $(date)"; } > "$log"
  local t0=$SECONDS
  "${args[@]}" >> "$log" 2>&1
  local rc=$?
  { echo "# Accounting: time=$((SECONDS - t0)) threads=1"; echo "# Ended (code $rc) at $(date)"; } >> "$log"
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

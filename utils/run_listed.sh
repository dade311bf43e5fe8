#!/usr/bin/env bash
# Usage: utils/run_listed.sh VAR LIST N LOGFILE COMMAND...
# Job N of a list of names: reads line N of LIST (e.g. a model's name), replaces VAR by it in LOGFILE and COMMAND,
# and runs COMMAND with its output and exit status in LOGFILE (utils/run_local.sh). Kaldi-style runners number
# jobs 1..N only, so run.sh runs named jobs as `${train_cmd} JOB=1:N LOG utils/run_listed.sh VAR LIST JOB ...`,
# and each job still logs into its own model's folder.
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,6p' "$0" >&2; exit 1; }
var=$1 list=$2 n=$3 log=$4; shift 4
[[ $var =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "$0: VAR must be a name like STUDENT, got '${var}'" >&2; exit 1; }
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "$0: N must be a line number (1 or more), got '${n}'" >&2; exit 1; }
[ -f "$list" ] || { echo "$0: no list ${list}" >&2; exit 1; }
item=$(sed -n "${n}p" "$list")
[ -n "$item" ] || { echo "$0: ${list} has no line ${n}" >&2; exit 1; }
[[ $item =~ ^[^[:space:]]+$ ]] || { echo "$0: line ${n} of ${list} is not one name: '${item}'" >&2; exit 1; }
exec "$(dirname "$0")/run_local.sh" "${log//$var/$item}" "${@//$var/$item}"

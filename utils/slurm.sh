#!/usr/bin/env bash
# Usage: utils/slurm.sh [--config conf/slurm.conf] [--max-jobs-run N] [--mem 4G] [--num_threads N] [--gpu N]
#            [--time T] [--name NAME] [JOB=1:N | JOB=K] LOGFILE COMMAND...
# Slurm back end of cmd.sh (the interface of Kaldi's slurm.pl and utils/run_local.sh): submits COMMAND as one
# sbatch job, or JOB=1:N as a job array (--array=1-N%max, max from --max-jobs-run) whose task k runs COMMAND with
# JOB replaced by k in LOGFILE and COMMAND; waits for it; each job's log holds its command, host, Slurm job id,
# output and exit code (utils/run_local.sh writes it inside the job); fails if any job failed, naming its log.
# Resource options become sbatch options through the config, in Kaldi's format (see conf/slurm.conf):
#   command sbatch ...          the submit command;   default NAME=VALUE   the value when the option is not given
#   option NAME=* ARGS ($0 = the value)               option NAME=VALUE ARGS   (an exact value first)
# --num-threads and --num_threads are the same option. The job scripts and Slurm's own output of each job (what
# went wrong before its log started) are under LOGDIR/q/. Interrupting this script cancels the job.
set -euo pipefail
# One block, read before it runs: this script waits for hours, and editing it meanwhile must not change the run.
{
me=utils/slurm.sh
die() { echo "${me}: $*" >&2; exit 1; }
usage() { sed -n '2,12p' "$0" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)

config=conf/slurm.conf; max_jobs=""
declare -A given=()
while [[ ${1:-} == --* ]]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --config) config=$2 ;;
    --max-jobs-run) max_jobs=$2 ;;
    *) name=${1#--}; given[${name//-/_}]=$2 ;;
  esac
  shift 2
done
[ -z "$max_jobs" ] || [[ $max_jobs =~ ^[1-9][0-9]*$ ]] || die "--max-jobs-run takes a number of 1 or more, got '${max_jobs}'"

jobvar=""; start=1; end=1
if [[ ${1:-} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
  [[ $1 =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)(:([0-9]+))?$ ]] || die "invalid job range '$1': Kaldi's JOB=1:N or JOB=K, indices from 1"
  jobvar=${BASH_REMATCH[1]}; start=$((10#${BASH_REMATCH[2]})); end=$((10#${BASH_REMATCH[4]:-${BASH_REMATCH[2]}}))
  ((start >= 1 && start <= end)) || die "invalid job range '$1': Kaldi's JOB=1:N or JOB=K, indices from 1"
  shift
fi
[ $# -ge 2 ] || usage
log_tpl=$1; shift
for tool in sbatch squeue scancel; do
  command -v "$tool" >/dev/null || die "${tool} not found: cmd_backend=slurm needs Slurm's client commands (apt-get install slurm-client)"
done

# The config, in Kaldi's format.
[ -f "$config" ] || die "no config ${config} (--config FILE; the recipe's is conf/slurm.conf)"
config_text=$(cat "$config")
submit=(); declare -A rule=() default=()
while read -r kind spec rest; do
  case "$kind" in
    ""|"#"*) ;;
    command) read -r -a submit <<< "$spec $rest" ;;
    option) [[ $spec == ?*=?* ]] || die "${config}: bad line 'option ${spec} ${rest}' (option NAME=VALUE|* ARGS)"
            rule[$spec]=$rest ;;
    default) [[ $spec == ?*=?* ]] || die "${config}: bad line 'default ${spec}' (default NAME=VALUE)"
             default[${spec%%=*}]=${spec#*=} ;;
    *) die "${config}: unknown line '${kind} ${spec} ${rest}' (command, option or default)" ;;
  esac
done < <(sed 's/#.*//' <<< "$config_text")
[ ${#submit[@]} -gt 0 ] || die "${config}: no 'command' line (e.g. command sbatch --export=PATH)"
for name in "${!default[@]}"; do [ -n "${given[$name]+set}" ] || given[$name]=${default[$name]}; done
logdir=$(dirname "$log_tpl"); base=$(basename "$log_tpl" .log); base=${base//${jobvar:-@@none@@}/@}
# the job's name in squeue: the log's (teacher.JOB), where the config names jobs
[ -n "${given[name]+set}" ] || [ -z "${rule[name=*]+set}" ] || given[name]=${base//@/JOB}
resources=()
for name in $(printf '%s\n' "${!given[@]}" | sort); do
  value=${given[$name]}
  if [ -n "${rule[$name=$value]+set}" ]; then args=${rule[$name=$value]}
  elif [ -n "${rule[$name=*]+set}" ]; then args=${rule[$name=*]//\$0/$value}
  else die "--${name} ${value}: ${config} has no 'option ${name}=...' line for it"
  fi
  read -r -a words <<< "$args"; resources+=("${words[@]}")
done

# One batch script for all tasks: utils/run_local.sh runs task k's command and writes its log.
qdir=${logdir}/q
mkdir -p "$qdir"
script=${qdir}/${base//@/JOB}.sh
{
  echo "#!/usr/bin/env bash"
  echo "# Submitted by ${me}: $(printf '%q ' "${submit[@]}" "${resources[@]}")"
  printf 'cd %q\n' "$PWD"
  echo "[ ! -f ./path.sh ] || . ./path.sh"
  printf 'exec %q' "${here}/run_local.sh"; [ -z "$jobvar" ] || printf ' "%s=${SLURM_ARRAY_TASK_ID}"' "$jobvar"
  printf ' %q' "$log_tpl" "$@"; echo
} > "$script"
chmod +x "$script"
logs=()
for ((i = start; i <= end; i++)); do
  log=${log_tpl//${jobvar:-@@none@@}/$i}; logs+=("$log")
  rm -f "$log"  # a stale log would pass for this run's
done
opts=(--parsable -o "${qdir}/${base//@/%a}.out")
[ -n "$jobvar" ] && opts+=("--array=${start}-${end}${max_jobs:+%$max_jobs}")
out=$("${submit[@]}" "${resources[@]}" "${opts[@]}" "$script" 2>&1) || die "submitting ${script} failed: ${out}"
job_id=${out%%;*}; job_id=${job_id##*$'\n'}
[[ $job_id =~ ^[0-9]+$ ]] || die "unexpected answer from ${submit[0]}: ${out}"
trap 'scancel "$job_id" 2>/dev/null; die "interrupted: cancelled Slurm job ${job_id}"' INT TERM

# Wait until no task of the job is pending or running. A job that Slurm has already purged is finished.
delay=1; errors=0
while :; do
  if states=$(squeue -h -j "$job_id" -t all -o %T 2>&1); then
    errors=0
    active=$(grep -cvxE 'COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE' <<< "$states" || true)
    [ -n "$states" ] && [ "$active" -gt 0 ] || break
  elif [[ $states == *"Invalid job id"* ]]; then
    break
  else
    errors=$((errors + 1)); [ "$errors" -lt 10 ] || die "squeue keeps failing for job ${job_id}: ${states}"
  fi
  sleep "$delay" & wait $!  # (a trap runs at once, not after the sleep)
  delay=$((delay < 8 ? delay * 2 : 10))
done

# Each job's verdict is the exit code its log ends with (a shared file system may show it a little late).
failed=0; num=${#logs[@]}
for k in "${!logs[@]}"; do
  log=${logs[$k]}; task=$((start + k))
  for _ in 1 2 3 4 5; do grep -q '^# Ended (code ' "$log" 2>/dev/null && break; sleep 1; done
  code=$(sed -n 's/^# Ended (code \([0-9]*\)).*/\1/p' "$log" 2>/dev/null | tail -1) || true  # no log: no code
  if [ -z "$code" ]; then
    echo "${me}: job ${job_id}${jobvar:+_$task} ended without an exit code (killed by Slurm?), see ${log} and ${qdir}/${base//@/$task}.out" >&2
    failed=$((failed + 1))
  elif [ "$code" -ne 0 ]; then
    echo "${me}: job ${job_id}${jobvar:+_$task} failed (code ${code}), see ${log}" >&2
    failed=$((failed + 1))
  fi
done
[ "$failed" -eq 0 ] || die "${failed} of ${num} jobs failed (Slurm job ${job_id})"
exit 0
}

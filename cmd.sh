# Where run.sh's jobs run (ESPnet's cmd.sh convention), picked by cmd_backend: set it here, or per run in the
# environment (cmd_backend=slurm ./run.sh ...).
#   local  utils/run_local.sh: on this machine, --max-jobs-run (run.sh's --nj) at a time; resource options ignored
#   slurm  utils/slurm.sh: sbatch jobs and job arrays on a Slurm cluster, waited for; conf/slurm.conf turns
#          --gpu, --mem, --num_threads, --time into sbatch options (put your partitions there)
# Both take Kaldi's interface: ${train_cmd} [--max-jobs-run N] [--gpu N ...] [JOB=1:N] LOGFILE COMMAND...
cmd_backend=${cmd_backend:-local}
case "$cmd_backend" in
  local) export train_cmd="utils/run_local.sh" decode_cmd="utils/run_local.sh" ;;
  slurm) export train_cmd="utils/slurm.sh --config conf/slurm.conf" decode_cmd="utils/slurm.sh --config conf/slurm.conf" ;;
  *) echo "cmd.sh: unknown cmd_backend '${cmd_backend}': local or slurm" >&2; return 1 ;;
esac

# How long steps are run (ESPnet/Kaldi convention). utils/run_local.sh runs jobs on this machine, at most
# --max-jobs-run at a time; point train_cmd/decode_cmd at a cluster wrapper (e.g. slurm.pl) to use one.
export train_cmd="utils/run_local.sh"
export decode_cmd="utils/run_local.sh"

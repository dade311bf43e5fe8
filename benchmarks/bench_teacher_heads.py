"""K teacher heads trained together (espnet_pate.bin.train_teacher_heads) against K separate ESPnet trainings
(local/train_asr.sh with conf/train_teacher_head*.yaml), same shards, same epochs, same public model.

    ./run.sh --debug true --stage 1 --stop-stage 3      # public model, dev_50, token list, statistics
    python benchmarks/bench_teacher_heads.py --debug --separate 3 --joint 3 20 100

Shards: K draws of --shard-utts utterances of data/sensitive (seeded by k; for timing only, they overlap when K
is large). Each run is a fresh process, as the recipe starts it: times include ESPnet's start-up. Separate
trainings are timed one after the other and their mean per teacher is multiplied by K (what K runs cost one
job at a time); the joint run is measured at each K given. Figures: process CPU time of the child (the machine
is shared; wall time printed beside it). What was measured and what extrapolated is printed and written to
--json.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from espnet_pate.data.kaldi_dir import read_kaldi_dir, subset_kaldi_dir


def timed(cmd, log_path: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        sys.exit(f"failed ({rc}): {' '.join(map(str, cmd))}; see {log_path}")
    return {"wall_s": time.time() - t, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def make_shards(src: Path, out: Path, num: int, utts: int, seed: int = 0) -> None:
    kdir = read_kaldi_dir(src)
    ids = kdir.utt_ids
    for k in range(num):
        d = out / f"shard_{k}"
        if not (d / "text").is_file():
            pick = np.random.default_rng([seed, k]).choice(len(ids), size=min(utts, len(ids)), replace=False)
            subset_kaldi_dir(kdir, d, [ids[i] for i in sorted(pick)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="conf/*_debug.yaml (the debug recipe's public model)")
    p.add_argument("--separate", type=int, default=3, help="separate ESPnet trainings to time")
    p.add_argument("--joint", type=int, nargs="+", default=[3, 20, 100], help="K values for the joint run")
    p.add_argument("--shard-utts", type=int, default=16)
    p.add_argument("--sensitive", default="data/sensitive")
    p.add_argument("--valid", default="data/dev_50")
    p.add_argument("--public", default="exp/public_only")
    p.add_argument("--workdir", default="exp/bench_teacher_heads")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sfx = "_debug" if args.debug else ""
    work = Path(args.workdir)
    shutil.rmtree(work / "runs", ignore_errors=True)
    (work / "runs").mkdir(parents=True)
    k_max = max([args.separate] + args.joint)
    shards = work / "shards"
    make_shards(Path(args.sensitive), shards, k_max, args.shard_utts)
    out = {"shard_utts": args.shard_utts, "valid": args.valid, "config": sfx or "default", "separate": [],
           "joint": {}}

    for k in range(args.separate):
        cmd = ["local/train_asr.sh", "--outdir", str(work / "runs" / f"separate_{k}"),
               "--config", f"conf/train_teacher_head{sfx}.yaml", "--train", str(shards / f"shard_{k}"),
               "--valid", args.valid, "--init_param", f"{args.public}/valid.loss.ave.pth"]
        r = timed(cmd, work / "runs" / f"separate_{k}.log")
        out["separate"].append(r)
        print(f"separate ESPnet training {k}: cpu {r['cpu_s']:.1f}s, wall {r['wall_s']:.1f}s", flush=True)
    per_teacher = float(np.mean([r["cpu_s"] for r in out["separate"]]))

    for k in args.joint:
        cmd = [sys.executable, "-m", "espnet_pate.bin.train_teacher_heads", "--public", args.public,
               "--shards", str(shards), "--num-teachers", str(k), "--valid", args.valid,
               "--out", str(work / "runs" / f"joint_k{k}"), "--config", f"conf/train_teacher_heads{sfx}.yaml"]
        r = timed(cmd, work / "runs" / f"joint_k{k}.log")
        r["separate_cpu_s_extrapolated"] = per_teacher * k
        r["ratio"] = per_teacher * k / r["cpu_s"]
        out["joint"][k] = r
        print(f"K={k}: joint cpu {r['cpu_s']:.1f}s (wall {r['wall_s']:.1f}s); {k} separate: {per_teacher * k:.1f}s "
              f"({'measured mean of ' + str(args.separate) if k <= args.separate else 'extrapolated'} "
              f"{per_teacher:.1f}s per teacher x {k}); separate / joint = {r['ratio']:.1f}x", flush=True)

    ks = sorted(out["joint"])
    if len(ks) >= 2:
        slope = (out["joint"][ks[-1]]["cpu_s"] - out["joint"][ks[0]]["cpu_s"]) / (ks[-1] - ks[0])
        out["joint_cpu_s_per_teacher"] = slope
        print(f"scaling: separate {per_teacher:.1f}s per teacher (start-up included, measured); joint "
              f"{slope:.2f}s per extra teacher (from K={ks[0]} to K={ks[-1]}, measured)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

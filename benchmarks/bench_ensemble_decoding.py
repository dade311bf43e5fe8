"""Benchmark: K teachers labelling the same utterances, lock-step batched decoding vs ESPnet one teacher at a time.

    python benchmarks/bench_ensemble_decoding.py --teachers exp/teachers_top_k10 --data data/public_unlabeled \\
        [--num-teachers 10] [--num-utts 20] [--batch-size 8] [--threads 1]

* lock-step: ``TeacherEnsemble`` + ``LockstepDecoder`` with a noise-free plurality vote (the shared encoder
  prefix once per utterance, the teacher-specific parts and the decoders/joints batched over teachers);
* ESPnet: the stock ``Speech2Text`` with ``beam_size: 1`` for each teacher in turn, on every utterance.

With fewer teacher directories than ``--num-teachers`` the directories are reused with perturbed decoders and
joint networks (written to a temporary directory), so every teacher differs. Each method runs in its own process;
the time (the fastest of ``--repeat`` runs: the CPU may be shared) excludes model loading and includes feature
extraction and encoders. Peak memory is the process's
maximum resident set size, and its growth over the baseline after importing ESPnet.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_teachers(teacher_dirs, k: int, out_dir: Path, scale: float = 0.02, equalize=()):
    """K experiment directories: the given ones, then perturbed copies (decoder + joint) of them in turn.

    ``equalize``: module prefixes whose tensors are set to teacher 0's in every teacher (what a frozen part
    would be if its BatchNorm statistics did not drift during fine-tuning)."""
    import shutil

    import torch

    from espnet_pate.ensemble.teachers import load_model
    from espnet_pate.ensemble.toy import HEAD_TRAINABLE, perturbed_copy

    ref = load_model(teacher_dirs[0])[0].state_dict() if equalize else None
    dirs = []
    for i in range(k):
        src = Path(teacher_dirs[i % len(teacher_dirs)])
        if i < len(teacher_dirs) and not equalize:
            dirs.append(src)
            continue
        model, _ = load_model(src)
        if i >= len(teacher_dirs):
            model = perturbed_copy(model, seed=1000 + i, scale=scale, trainable=HEAD_TRAINABLE)
        state = model.state_dict()
        for name in state:
            if any(name.startswith(p + ".") for p in equalize):
                state[name] = ref[name]
        dest = out_dir / f"teacher_{i}"
        dest.mkdir(parents=True)
        shutil.copy(src / "config.yaml", dest / "config.yaml")
        torch.save(state, dest / "valid.loss.ave.pth")
        dirs.append(dest)
    return dirs


def run_lockstep(dirs, utts, wav_scp, batch_size: int, repeat: int) -> dict:
    import soundfile
    import torch

    from espnet2.tasks.asr_transducer import ASRTransducerTask  # noqa: F401  (imported before the baseline)

    from espnet_pate.ensemble.lockstep import LockstepDecoder, NoiselessPlurality
    from espnet_pate.ensemble.teachers import TeacherEnsemble

    base_rss = _rss_mb()
    ens = TeacherEnsemble.from_dirs(dirs)
    loaded_rss = _rss_mb()
    waves = {u: soundfile.read(wav_scp[u], dtype="float32")[0] for u in utts}
    dec = LockstepDecoder(ens, NoiselessPlurality(), max_symbols_per_frame=5, batch_size=batch_size)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = dec.decode(utts, waves.get)
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    votes = res.queries.all_votes
    return {"seconds": seconds, "queries": res.queries.num_queries, "base_rss_mb": base_rss,
            "after_load_rss_mb": loaded_rss, "peak_rss_mb": _peak_mb(),
            "ensemble": {k: v for k, v in ens.describe().items() if k != "teachers"},
            "unanimous_fraction": float((votes.max(axis=1) == len(dirs)).mean()) if len(votes) else None,
            "threads": torch.get_num_threads()}


def run_espnet(dirs, utts, wav_scp, repeat: int) -> dict:
    import soundfile
    import torch
    from espnet2.bin.asr_transducer_inference import Speech2Text

    base_rss = _rss_mb()
    models = [Speech2Text(asr_train_config=str(Path(d) / "config.yaml"),
                          asr_model_file=str(Path(d) / "valid.loss.ave.pth"), beam_size=1) for d in dirs]
    loaded_rss = _rss_mb()
    waves = {u: soundfile.read(wav_scp[u], dtype="float32")[0] for u in utts}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tokens = 0
        for s2t in models:
            for u in utts:
                tokens += sum(1 for y in s2t(waves[u])[0].yseq if y != 0)
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    return {"seconds": seconds, "tokens": tokens, "base_rss_mb": base_rss, "after_load_rss_mb": loaded_rss,
            "peak_rss_mb": _peak_mb(), "threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", nargs="+", required=True, help="a directory of teacher_<k>/, or teacher dirs")
    p.add_argument("--data", required=True, help="Kaldi directory (wav.scp)")
    p.add_argument("--num-teachers", type=int, default=10)
    p.add_argument("--num-utts", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method; the fastest counts (shared CPU)")
    p.add_argument("--equalize", nargs="*", default=[],
                   help="module prefixes made identical across teachers, e.g. encoder.embed "
                        "encoder.encoders.blocks.0 (a 'top' fine-tune whose frozen BatchNorm statistics did not drift)")
    p.add_argument("--mode", choices=["lockstep", "espnet"], help=argparse.SUPPRESS)
    p.add_argument("--dirs-json", help=argparse.SUPPRESS)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from espnet_pate.data.kaldi_dir import read_table

    wav_scp = read_table(Path(args.data) / "wav.scp")
    utts = sorted(wav_scp)[: args.num_utts]
    if args.mode:  # child process: one method
        dirs = json.loads(Path(args.dirs_json).read_text())
        out = run_lockstep(dirs, utts, wav_scp, args.batch_size, args.repeat) if args.mode == "lockstep" \
            else run_espnet(dirs, utts, wav_scp, args.repeat)
        print("RESULT " + json.dumps(out))
        return 0

    from espnet_pate.ensemble.teachers import teacher_dirs_in

    given = teacher_dirs_in(args.teachers[0]) if len(args.teachers) == 1 and \
        not (Path(args.teachers[0]) / "config.yaml").exists() else [Path(t) for t in args.teachers]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = prepare_teachers(given, args.num_teachers, Path(tmp), equalize=args.equalize)
        dirs_json = Path(tmp) / "dirs.json"
        dirs_json.write_text(json.dumps([str(d) for d in dirs]))
        results = {}
        for mode in ("lockstep", "espnet"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--dirs-json", str(dirs_json)]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                return 1
            results[mode] = json.loads(line[len("RESULT "):])
    lock, esp = results["lockstep"], results["espnet"]
    print(f"{args.num_teachers} teachers ({len(given)} trained, the rest perturbed copies), {len(utts)} utterances, "
          f"{args.threads} thread(s), best of {args.repeat}"
          + (f"; made identical: {args.equalize}" if args.equalize else ""))
    print(f"lock-step batched : {lock['seconds']:.2f} s  ({lock['queries']} vote steps; shared encoder stages "
          f"{lock['ensemble']['shared_stages']}; peak RSS {lock['peak_rss_mb']:.0f} MB, models +"
          f"{lock['after_load_rss_mb'] - lock['base_rss_mb']:.0f} MB; ensemble tensors "
          f"{lock['ensemble']['total_bytes'] / 2**20:.1f} MB vs {lock['ensemble']['k_full_models_bytes'] / 2**20:.1f} "
          f"MB for K full models)")
    print(f"ESPnet, one by one: {esp['seconds']:.2f} s  (Speech2Text beam_size 1; peak RSS "
          f"{esp['peak_rss_mb']:.0f} MB, models +{esp['after_load_rss_mb'] - esp['base_rss_mb']:.0f} MB)")
    print(f"speed-up: {esp['seconds'] / lock['seconds']:.1f}x")
    print("JSON " + json.dumps({"lockstep": lock, "espnet": esp, "speedup": esp["seconds"] / lock["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

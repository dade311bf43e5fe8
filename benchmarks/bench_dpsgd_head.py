"""Time one DP-SGD step of the head (decoder + joint network, encoder and ctc_lin frozen): ESPnet's DP trainer
against the same step over cached encoder outputs, same model, same batch, side by side.

    python benchmarks/bench_dpsgd_head.py                            # conf/model.yaml model, batch 16
    python benchmarks/bench_dpsgd_head.py --batch 8 --rounds 3 --json out.json

Steps timed (train mode, Adam):

* ``espnet``: ``DpSgdRuntime.step`` on the ``make_dp_exact`` model with conf/train_dpsgd_head.yaml's frozen parts,
  as ``espnet_pate.bin.asr_transducer_dp_train`` runs it: features and the frozen encoder on every example of the
  Poisson batch, then per-example gradients of the head by vmap, clipping, noise; then ``optimizer.step``;
* ``cached``: ``HeadDpRuntime.step`` (espnet_pate.dpsgd.head_trainer) on the same utterances' encoder outputs,
  computed once beforehand (not timed: once per utterance for the whole run), then ``optimizer.step``.

The machine is shared, so the steps alternate (espnet, cached, espnet, ...) and each is measured in process CPU time
with one intra-op thread (wall time beside it); the figure is the median over rounds. The batch is synthetic with
the corpus's shapes (bench_dpsgd_step.make_batch). Figures: README ("DP-SGD").
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_dpsgd_step import Timer, base_parser, build_args, make_batch  # noqa: E402


def main(argv=None):
    a = base_parser(__doc__).parse_args(argv)
    torch.set_num_threads(a.threads)

    from espnet2.tasks.asr_transducer import ASRTransducerTask

    from espnet_pate.dpsgd.head_trainer import HeadDpRuntime, freeze
    from espnet_pate.dpsgd.model_fixes import make_dp_exact
    from espnet_pate.dpsgd.step import DpSgdRuntime
    from espnet_pate.ensemble.encoder_cache import CachedUtt, encode_utterance

    torch.manual_seed(0)
    public = ASRTransducerTask.build_model(build_args(a.config, a.vocab))
    frozen = ["encoder", "ctc_lin"]  # conf/train_dpsgd_head.yaml
    espnet, cached = make_dp_exact(copy.deepcopy(public)), copy.deepcopy(public)
    for m in (espnet, cached):
        freeze(m, frozen)
    batch = make_batch(a.batch, a.vocab)
    ids = [f"u{i}" for i in range(a.batch)]
    cached.eval()
    utts = [CachedUtt(u, encode_utterance(cached, batch["speech"][i, : int(batch["speech_lengths"][i])]),
                      batch["text"][i, : int(batch["text_lengths"][i])].clone()) for i, u in enumerate(ids)]
    plan = {"unit": "utterance", "sampling": "poisson", "sample_rate": 0.01, "expected_batch_units": float(a.batch),
            "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "accountant": "rdp", "seed": None,
            "per_example_method": a.method, "max_physical_batch_size": max(32, a.batch)}
    runs = {"espnet": (DpSgdRuntime(plan), espnet, batch), "cached": (HeadDpRuntime(plan), cached, utts)}
    opts = {}
    for name, (rt, model, _) in runs.items():
        model.train()
        rt.begin_epoch(model, 1)
        opts[name] = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    n_train = sum(q.numel() for q in cached.parameters() if q.requires_grad)

    def step(name):
        rt, model, data = runs[name]
        rt.step(model, ids, data)
        opts[name].step()
        opts[name].zero_grad()

    t = Timer()
    for r in range(a.warmup + a.rounds):
        tt = t if r >= a.warmup else Timer()
        for name in runs:
            tt.timed(name, lambda: step(name))
    ratio, ratio_wall = t.med("espnet") / t.med("cached"), t.med("espnet", True) / t.med("cached", True)
    print(f"model {a.config.name}: {n_train / 1e6:.3f}M trainable (decoder + joint network); batch {a.batch}; "
          f"{a.threads} thread(s); method {a.method}; median of {a.rounds} alternating rounds")
    print(f"{'DP step':<10}{'CPU s':>8}{'wall s':>8}")
    for k in runs:
        print(f"{k:<10}{t.med(k):>8.3f}{t.med(k, True):>8.3f}")
    print(f"ratio espnet / cached: {ratio:.1f}x CPU time ({ratio_wall:.1f}x wall)")
    res = {"config": str(a.config), "batch": a.batch, "threads": a.threads, "method": a.method, "rounds": a.rounds,
           "cpu_s": {k: t.med(k) for k in runs}, "wall_s": {k: t.med(k, True) for k in runs},
           "ratio_cpu": ratio, "ratio_wall": ratio_wall, "all_cpu_s": t.cpu}
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()

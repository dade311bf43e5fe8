"""Time one DP-SGD step against one normal ESPnet training step, same model, same batch, side by side.

    python benchmarks/bench_dpsgd_step.py                       # conf/model.yaml model, batch 16
    python benchmarks/bench_dpsgd_step.py --rounds 7 --json out.json
    python benchmarks/bench_dpsgd_step.py --batch 40 --utts_per_unit 10 # speaker units of 10 utterances

Steps timed (train mode, Adam, the recipe's torchaudio RNN-T loss):

* ``normal``: ESPnet's step as ``Trainer.train_one_epoch`` does it on the stock model: ``model(**batch)``,
  ``backward``, ``clip_grad_norm_(5)``, ``optimizer.step``;
* ``normal_fixed``: the same on the model after ``make_dp_exact`` (per-utterance frontend, exact masks), to
  separate what the fixes cost from what per-example gradients cost;
* ``dpsgd``: ``DpSgdRuntime.step`` (the trainer's own code: per-example gradients by ``torch.func.vmap``, clipping,
  Gaussian noise, division by the expected batch size, written to ``p.grad``) then ``optimizer.step``.

The machine is shared, so the steps alternate (normal, normal_fixed, dpsgd, normal, ...) and each is measured in
process CPU time with one intra-op thread (wall time is printed beside it); the figure is the median over rounds.
The DP step is then broken down (features per utterance; vmap'd forward+backward; clipping; noise; optimizer).

The batch is synthetic with the corpus's shapes (1.5-4 s of 16 kHz audio, 10-35 tokens of a 102-token list), in
random order (a Poisson batch is not length-sorted; both steps see the same padded batch).

The figures are in README ("DP-SGD"). The fixed model's normal step can be faster than the stock one: exact
masks give each utterance its own encoder length (the stock model runs every utterance's joint network and loss
at the longest length).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_args(config: Path, vocab: int):
    from espnet2.tasks.asr_transducer import ASRTransducerTask

    from espnet_pate.asr.train_config import resolve_config

    parser = ASRTransducerTask.get_parser()
    parser.set_defaults(**resolve_config(config))
    args = parser.parse_args([])
    args.token_list = ["<blank>", "<unk>"] + [f"t{i}" for i in range(vocab - 3)] + ["<sos/eos>"]
    args.input_size = None
    args.normalize = "utterance_mvn"  # parameter-free, as global_mvn (stats files are recipe outputs)
    args.normalize_conf = {}
    return args


def make_batch(n: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(24000, 64000, (n,), generator=g)
    speech = torch.randn(n, int(lens.max()), generator=g) * 0.1
    for i, m in enumerate(lens):
        speech[i, m:] = 0.0
    tlens = torch.randint(10, 36, (n,), generator=g)
    text = torch.full((n, int(tlens.max())), -1, dtype=torch.long)
    for i, m in enumerate(tlens):
        text[i, :m] = torch.randint(2, vocab - 1, (int(m),), generator=g)
    return {"speech": speech, "speech_lengths": lens, "text": text, "text_lengths": tlens}


def release(model):
    for mod in model.modules():
        if torch.is_tensor(getattr(mod, "attn", None)):
            mod.attn = None


class Timer:
    def __init__(self):
        self.cpu = {}
        self.wall = {}

    def add(self, name, cpu, wall):
        self.cpu.setdefault(name, []).append(cpu)
        self.wall.setdefault(name, []).append(wall)

    def timed(self, name, fn):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        self.add(name, time.process_time() - c0, time.perf_counter() - w0)
        return out

    def med(self, name, wall=False):
        return statistics.median((self.wall if wall else self.cpu)[name])


def base_parser(doc: str) -> argparse.ArgumentParser:
    """The options the DP step benchmarks share (bench_dpsgd_head.py too)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "conf/model.yaml")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=102)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--method", default="vmap", choices=["vmap", "loop"])
    p.add_argument("--utts_per_unit", type=int, default=1,
                   help="privacy unit of this many consecutive utterances (a speaker); 1: utterance unit")
    p.add_argument("--json", type=Path, default=None)
    return p


def main(argv=None):
    p = base_parser(__doc__)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--sigma", type=float, default=1.0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from espnet2.tasks.asr_transducer import ASRTransducerTask

    from espnet_pate.asr.rnnt_loss import RNNTLoss
    from espnet_pate.dpsgd.model_fixes import make_dp_exact, per_example_feats
    from espnet_pate.dpsgd.per_example import add_noise, clip_and_sum
    from espnet_pate.dpsgd.step import DpSgdRuntime

    args = build_args(a.config, a.vocab)
    torch.manual_seed(0)
    stock = ASRTransducerTask.build_model(args)
    stock.criterion_transducer = RNNTLoss(blank_id=0)
    fixed = make_dp_exact(copy.deepcopy(stock))
    dp = make_dp_exact(copy.deepcopy(stock))
    for m in (stock, fixed, dp):
        m.train()
    n_params = sum(q.numel() for q in stock.parameters())
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in
            (("normal", stock), ("normal_fixed", fixed), ("dpsgd", dp))}
    batch = make_batch(a.batch, a.vocab)
    utts = [f"u{i}" for i in range(a.batch)]
    utt2unit = {u: f"s{i // a.utts_per_unit}" for i, u in enumerate(utts)}
    plan = {"unit": "speaker" if a.utts_per_unit > 1 else "utterance", "sampling": "poisson", "sample_rate": 0.01,
            "expected_batch_units": float(a.batch), "clip_norm": a.clip, "noise_multiplier": a.sigma, "delta": 1e-5,
            "accountant": "rdp", "seed": None, "per_example_method": a.method,
            "max_physical_batch_size": max(32, a.batch)}
    rt = DpSgdRuntime(plan, utt2unit)
    rt.begin_epoch(dp, 1)
    t = Timer()

    def normal_step(model, opt):
        loss, _, _ = model(**batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad()
        release(model)

    def dp_step():
        rt.step(dp, utts, batch)
        opts["dpsgd"].step()
        opts["dpsgd"].zero_grad()

    for r in range(a.warmup + a.rounds):
        tt = t if r >= a.warmup else Timer()
        tt.timed("normal", lambda: normal_step(stock, opts["normal"]))
        tt.timed("normal_fixed", lambda: normal_step(fixed, opts["normal_fixed"]))
        tt.timed("dpsgd", dp_step)

    # breakdown of the DP step (same model and batch)
    b = Timer()
    engine = rt.engine
    sp, sl, tx, tl = batch["speech"], batch["speech_lengths"], batch["text"], batch["text_lengths"]
    for _ in range(max(1, a.rounds // 2)):
        with torch.no_grad():
            b.timed("features (per utterance)", lambda: per_example_feats(dp, sp, sl))
        per = b.timed("per-example grads (features + vmap fwd/bwd)",
                      lambda: engine.per_example_grads(sp, sl, tx, tl))[0]
        s = b.timed("clip and sum", lambda: clip_and_sum(per, a.clip))[0]
        b.timed("noise", lambda: add_noise(s, a.clip, a.sigma, float(a.batch), rt.generator))
        for n, q in engine.trainable().items():
            q.grad = s[n]
        b.timed("optimizer (Adam)", lambda: opts["dpsgd"].step())
        opts["dpsgd"].zero_grad()
    f = b.med("features (per utterance)")
    g = b.med("per-example grads (features + vmap fwd/bwd)")

    res = {
        "config": str(a.config), "params": n_params, "batch": a.batch, "threads": a.threads, "method": a.method,
        "rounds": a.rounds, "cpu_s": {k: t.med(k) for k in t.cpu}, "wall_s": {k: t.med(k, wall=True) for k in t.wall},
        "ratio_dpsgd_vs_normal_cpu": t.med("dpsgd") / t.med("normal"),
        "ratio_dpsgd_vs_normal_wall": t.med("dpsgd", True) / t.med("normal", True),
        "ratio_dpsgd_vs_normal_fixed_cpu": t.med("dpsgd") / t.med("normal_fixed"),
        "breakdown_cpu_s": {"features (per utterance)": f, "vmap forward+backward": g - f,
                            **{k: b.med(k) for k in ("clip and sum", "noise", "optimizer (Adam)")}},
        "all_cpu_s": t.cpu,
    }
    print(f"model {a.config.name}: {n_params / 1e6:.2f}M parameters; batch {a.batch}; {a.threads} thread(s); "
          f"method {a.method}; median of {a.rounds} alternating rounds")
    print(f"{'step':<14}{'CPU s':>8}{'wall s':>8}")
    for k in ("normal", "normal_fixed", "dpsgd"):
        print(f"{k:<14}{t.med(k):>8.3f}{t.med(k, True):>8.3f}")
    print(f"ratio dpsgd / normal: {res['ratio_dpsgd_vs_normal_cpu']:.2f}x CPU time "
          f"({res['ratio_dpsgd_vs_normal_wall']:.2f}x wall); dpsgd / normal_fixed "
          f"{res['ratio_dpsgd_vs_normal_fixed_cpu']:.2f}x (target <= 2.5x)")
    print("DP step breakdown (CPU s):")
    for k, v in res["breakdown_cpu_s"].items():
        print(f"  {k:<28}{v:>8.3f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()

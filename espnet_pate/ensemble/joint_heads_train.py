"""Training of K teacher heads in one process: epochs, per-teacher validation and selection, resume.

``train_teacher_heads(public_dir, shard_dirs, valid_dir, out_dir, config)`` encodes every utterance once with the
frozen public encoder (espnet_pate.ensemble.encoder_cache), trains all heads together (espnet_pate.ensemble.joint_heads)
and writes ``out_dir/teacher_<k>`` as ESPnet experiment directories (espnet_pate.ensemble.head_experiments).

Each teacher follows what ESPnet's trainer would do on its shard alone: its own batch order per epoch
(``sorted`` batches shuffled by a generator seeded from (seed, epoch), as ESPnet's), Adam and WarmupLR with its own step
count, gradient clipping by its own norm (an update with a non-finite norm is skipped), validation loss per
epoch, early stopping by its own patience, the average of its n best epochs. Only the transducer loss is
computed: an auxiliary CTC loss reads the frozen encoder alone, so it is constant for a head and changes no
selection; an auxiliary LM loss is refused.

After every epoch the whole state goes to ``out_dir/joint_heads.ckpt`` (written atomically): a killed run
resumes from its last finished epoch; a finished one leaves ``out_dir/.done`` and is skipped.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np
import torch
import yaml

from espnet_pate.asr.train_config import ARCHITECTURE_KEYS, resolve_config
from espnet_pate.ensemble.encoder_cache import encode_kaldi_dir, token_ids_fn
from espnet_pate.ensemble.head_experiments import teacher_config, write_teacher_dir
from espnet_pate.ensemble.joint_heads import (StackedAdam, StackedHeads, bucket_shape, clip_per_teacher, make_batch,
                                         sorted_batches, warmup_lr)
from espnet_pate.ensemble.teachers import CONFIG_FILE, MODEL_FILE, load_model

log = logging.getLogger(__name__)

CHECKPOINT = "joint_heads.ckpt"
DEFAULTS = {"batch_type": "sorted", "batch_size": 16, "max_epoch": 10, "patience": None, "optim": "adam",
            "optim_conf": {"lr": 1e-3}, "scheduler": None, "scheduler_conf": {}, "grad_clip": 5.0,
            "keep_nbest_models": 3, "best_model_criterion": [["valid", "loss", "min"]], "seed": 0,
            "teacher_chunk": 8, "bucket_frames": 8, "bucket_tokens": 4,
            "loss_backend": "torch"}


def load_train_config(path: os.PathLike | str) -> Dict:
    """Training options: conf/train_teacher_heads*.yaml, or an ESPnet teacher config (conf/train_teacher_head*.yaml),
    resolved over their base_config; architecture keys are dropped (the architecture is the public model's).
    Unsupported settings raise."""
    raw = resolve_config(path)
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if k not in ARCHITECTURE_KEYS}}
    problems = []
    if cfg["optim"] != "adam":
        problems.append(f"optim {cfg['optim']!r} (only adam)")
    if cfg["scheduler"] not in (None, "warmuplr"):
        problems.append(f"scheduler {cfg['scheduler']!r} (warmuplr or null)")
    if cfg["batch_type"] not in ("sorted", "unsorted"):
        problems.append(f"batch_type {cfg['batch_type']!r} (sorted)")
    if [list(c) for c in cfg["best_model_criterion"]][:1] != [["valid", "loss", "min"]]:
        problems.append("best_model_criterion must be [[valid, loss, min]]")
    if cfg.get("freeze_param") is not None and "encoder" not in cfg["freeze_param"]:
        problems.append(f"freeze_param {cfg['freeze_param']} does not freeze the encoder (heads only)")
    if float((cfg.get("model_conf") or {}).get("auxiliary_lm_loss_weight", 0.0)) > 0:
        problems.append("auxiliary_lm_loss_weight > 0 is not implemented")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return cfg


def _generator(seed: int, k: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))


def _chunks(items: Sequence[int], size: int):
    for i in range(0, len(items), size):
        yield list(items[i: i + size])


@torch.no_grad()
def _valid_losses(heads: StackedHeads, valid, teachers: List[int], batch_size: int, chunk: int) -> Dict[int, float]:
    out = {k: 0.0 for k in teachers}
    for idx in sorted_batches(valid, batch_size):
        utts = [valid[i] for i in idx]
        for group in _chunks(teachers, chunk):
            losses = heads.losses(make_batch([utts] * len(group)), torch.tensor(group))
            for k, loss in zip(group, losses.tolist()):
                out[k] += loss * len(utts)
    return {k: v / len(valid) for k, v in out.items()}


def train_teacher_heads(public_dir: os.PathLike | str, shard_dirs: Sequence[os.PathLike | str],
                        valid_dir: os.PathLike | str, out_dir: os.PathLike | str, config: Mapping,
                        model_file: str = MODEL_FILE, progress: Callable[[str], None] = print) -> List[Path]:
    """Trains one head per shard; returns the teacher directories (see the module docstring)."""
    out_dir = Path(out_dir)
    dirs = [out_dir / f"teacher_{k}" for k in range(len(shard_dirs))]
    if (out_dir / ".done").is_file() or all((d / ".done").is_file() for d in dirs):
        progress(f"skip {out_dir} (done)")
        return dirs
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model, args = load_model(public_dir, "cpu", model_file)
    public_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tokenize = token_ids_fn(args)
    cache: Dict = {}
    shards = [encode_kaldi_dir(model, tokenize, d, cache) for d in shard_dirs]
    valid = encode_kaldi_dir(model, tokenize, valid_dir, cache)
    num = len(shards)
    progress(f"encoded {len(cache)} utterances once ({num} shards, {len(valid)} valid) in {time.time() - start:.1f}s")

    dec_conf = {**(vars(args).get("decoder_conf") or {}), **(config.get("decoder_conf") or {})}
    heads = StackedHeads(public_state, num, model.decoder, model.joint_network,
                         dec_conf.get("dropout_rate", 0.0), dec_conf.get("embed_dropout_rate", 0.0),
                         loss_backend=config["loss_backend"])
    optim_conf = dict(config["optim_conf"])
    base_lr = float(optim_conf.pop("lr", 1e-3))
    opt = StackedAdam(heads.params, num, betas=optim_conf.pop("betas", (0.9, 0.999)), eps=optim_conf.pop("eps", 1e-8))
    if float(optim_conf.pop("weight_decay", 0.0)) != 0 or optim_conf:
        raise ValueError(f"optim_conf {config['optim_conf']}: only lr, betas, eps are supported")
    warmup = (config.get("scheduler_conf") or {}).get("warmup_steps") if config.get("scheduler") else None
    seed, bs, chunk = int(config["seed"]), int(config["batch_size"]), int(config["teacher_chunk"])
    bucket_t, bucket_u = int(config["bucket_frames"]), int(config["bucket_tokens"])
    max_epoch, nbest, patience = int(config["max_epoch"]), int(config["keep_nbest_models"]), config.get("patience")
    gens = [_generator(seed, k) for k in range(num)]
    valid_hist: List[List[float]] = [[] for _ in range(num)]
    best: List[List[tuple]] = [[] for _ in range(num)]  # per teacher: (loss, epoch, head state), best first
    stopped = torch.zeros(num, dtype=torch.bool)
    first_epoch = 1
    ckpt_path = out_dir / CHECKPOINT
    shard_names = [str(d) for d in shard_dirs]
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["shards"] != shard_names:
            raise ValueError(f"{ckpt_path}: written for other shards ({ckpt['shards'][:2]}...): remove it to restart")
        with torch.no_grad():
            for k, p in heads.params.items():
                p.copy_(ckpt["params"][k])
        opt.load_state_dict(ckpt["adam"])
        for g, state in zip(gens, ckpt["gens"]):
            g.set_state(state)
        valid_hist, best, stopped = ckpt["valid"], ckpt["best"], ckpt["stopped"]
        first_epoch = ckpt["epoch"] + 1
        progress(f"resuming {out_dir} after epoch {ckpt['epoch']}")

    batches = [sorted_batches(s, bs) for s in shards]
    for epoch in range(first_epoch, max_epoch + 1):
        t_epoch = time.time()
        # One public shuffle of batch ranks (ESPnet's separate teachers share the seed, hence the shuffle, too):
        # at a step, teachers read batches of similar rank in length, so their padded shapes mostly coincide.
        keys = np.random.default_rng([seed, epoch]).random(max(len(b) for b in batches))
        order = [[batches[k][i] for i in np.argsort(keys[: len(batches[k])], kind="stable")] for k in range(num)]
        running = [k for k in range(num) if not stopped[k]]
        train_sum = torch.zeros(num, dtype=torch.float64)
        for step in range(max((len(order[k]) for k in running), default=0)):
            active = [k for k in running if step < len(order[k])]
            for p in heads.params.values():
                p.grad = None
            by_shape: Dict[tuple, List[int]] = {}
            for k in active:
                utts = [shards[k][i] for i in order[k][step]]
                by_shape.setdefault(bucket_shape(utts, bs, bucket_t, bucket_u), []).append(k)
            for shape, ks in by_shape.items():
                for group in _chunks(ks, chunk):
                    batch = make_batch([[shards[k][i] for i in order[k][step]] for k in group], shape)
                    losses = heads.losses(batch, torch.tensor(group), [gens[k] for k in group])
                    losses.sum().backward()
                    train_sum[group] += losses.detach().double()
            heads.zero_padding_grad()
            norms = clip_per_teacher(heads.params, float(config["grad_clip"]))
            mask = torch.zeros(num, dtype=torch.bool)
            mask[active] = True
            bad = mask & ~torch.isfinite(norms)
            if bad.any():
                log.warning("epoch %d step %d: non-finite gradient norm, update skipped for teachers %s",
                            epoch, step, bad.nonzero().flatten().tolist())
            opt.step(mask & ~bad, warmup_lr(base_lr, warmup, opt.steps + 1))
        losses = _valid_losses(heads, valid, running, bs, chunk)
        for k, loss in losses.items():
            valid_hist[k].append(loss)
            best[k] = sorted(best[k] + [(loss, epoch, heads.teacher_state(k))], key=lambda x: (x[0], x[1]))[:nbest]
            if patience is not None and epoch - best[k][0][1] > int(patience):
                stopped[k] = True
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"shards": shard_names, "epoch": epoch, "adam": opt.state_dict(),
                    "params": {k: p.detach() for k, p in heads.params.items()},
                    "gens": [g.get_state() for g in gens], "valid": valid_hist, "best": best, "stopped": stopped},
                   tmp)
        os.replace(tmp, ckpt_path)
        took = time.time() - t_epoch
        mean_train = float(np.mean([train_sum[k] / max(len(order[k]), 1) for k in running])) if running else 0.0
        progress(f"epoch {epoch}/{max_epoch}: {len(running)} of {num} teachers trained, train loss {mean_train:.3f}, "
                 f"valid loss {np.mean(list(losses.values())):.3f} (means over teachers), {took:.1f}s, "
                 f"about {took * (max_epoch - epoch):.0f}s left")
        if bool(stopped.all()):
            progress(f"every teacher stopped early (patience {patience})")
            break

    public_config = yaml.safe_load((Path(public_dir) / CONFIG_FILE).read_text())
    init = str(Path(public_dir) / model_file)
    for k, d in enumerate(dirs):
        if (d / ".done").is_file():  # finished before this run (e.g. by --teacher_training espnet): kept
            progress(f"kept {d} (done before this run)")
            continue
        cfg = teacher_config(public_config, config, shard_dirs[k], valid_dir, d, init)
        write_teacher_dir(d, cfg, public_state, [s for _, _, s in best[k]], valid_hist[k])
    (out_dir / ".done").touch()
    ckpt_path.unlink(missing_ok=True)
    progress(f"{num} teachers written to {out_dir}/teacher_0..{num - 1} in {time.time() - start:.1f}s")
    return dirs


__all__ = ["train_teacher_heads", "load_train_config", "DEFAULTS", "CHECKPOINT"]

"""DP-SGD of the decoder and joint network over the frozen public encoder's cached outputs (stage 6's head baseline).

``train_dpsgd_head(public_dir, train_dir, valid_dir, out_dir, config)`` trains what the ESPnet DP trainer trains with
conf/train_dpsgd_head.yaml (encoder and ctc_lin frozen), the same way, but reads the encoder output of each
utterance from a cache filled once (``espnet_pate.ensemble.encoder_cache``, in eval mode as the PATE teacher heads
read it) instead of running the encoder on every Poisson batch:

* the plan is ``plan_dp``'s for the Namespace ESPnet's DP task would hold (``head_config.plan_args``): the same q,
  steps, sigma calibrated before training, the same ledger check before any work (``release.check_plan_fits``);
* batches are ``DpBatchSampler``'s Poisson draws of units (utterances or speakers), epoch by epoch;
* each step is ``DpSgdRuntime.step`` (accountant, per-epoch noise generator) driving ``HeadGradients``: exact
  per-unit gradients, clipping, N(0, (sigma C)^2), division by q N_units, then torch's Adam and ESPnet's WarmupLR;
* after each epoch: the loss on the held-out dev set (the transducer loss; the auxiliary CTC term reads frozen
  parts only, a constant that ranks no epoch differently), ESPnet's early stopping by patience, the n best epochs
  kept; then the whole state (model head, Adam, scheduler, accountant, history, torch's RNG) is saved atomically,
  so a killed run resumes after its last finished epoch;
* at the end, an ESPnet experiment directory as ESPnet's trainer leaves it (``head_experiments.write_teacher_dir``:
  config.yaml, valid.loss.best.pth, valid.loss.ave_<n>best.pth, valid.loss.ave.pth; encoder and ctc_lin the public
  tensors, bit for bit), released by ``release.release_model`` (dp_report.json, config.yaml's dp_report, the
  ledger record, privacy.json), then ``.done``.

Not the same as the ESPnet run: ESPnet's train mode keeps the frozen encoder's dropout on, this encoder output is
the eval-mode one (what decoding sees, and what the teachers train on).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch
import yaml

from espnet_pate.dpsgd.head_config import check_run, plan_args, train_data, valid_data
from espnet_pate.dpsgd.head_grads import HEAD_PARTS, HeadGradients
from espnet_pate.dpsgd.plan import load_units, plan_dp
from espnet_pate.dpsgd.release import check_plan_fits, data_files, final_report, release_model
from espnet_pate.dpsgd.sampler import DpBatchSampler
from espnet_pate.dpsgd.step import DpSgdRuntime
from espnet_pate.ensemble.encoder_cache import encode_kaldi_dir, token_ids_fn
from espnet_pate.ensemble.head_experiments import teacher_config, write_teacher_dir
from espnet_pate.ensemble.teachers import CONFIG_FILE, MODEL_FILE, load_model

CHECKPOINT = "dpsgd_head.ckpt"

__all__ = ["CHECKPOINT", "HeadDpRuntime", "freeze", "train_dpsgd_head"]


class HeadDpRuntime(DpSgdRuntime):
    """``DpSgdRuntime`` with ``HeadGradients`` as its engine: batches are lists of cached utterances."""

    def begin_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        if self.engine is None or self.engine.model is not model:
            self.engine = HeadGradients(model, method=self.plan["per_example_method"])
        super().begin_epoch(model, epoch)

    def _engine_call(self, model, utt_ids, batch):
        _, kwargs = super()._engine_call(model, utt_ids, {})
        return (batch,), kwargs


def freeze(model: torch.nn.Module, names) -> None:
    """ESPnet's ``freeze_param``: every parameter named ``t`` or under ``t.`` stops requiring grad."""
    for k, p in model.named_parameters():
        if any(k == t or k.startswith(t + ".") for t in names):
            p.requires_grad = False


def _head_state(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(HEAD_PARTS)}


def _save(path: Path, state: Dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_dpsgd_head(public_dir: os.PathLike | str, train_dir: os.PathLike | str, valid_dir: os.PathLike | str,
                     out_dir: os.PathLike | str, config: Mapping, model_file: str = MODEL_FILE,
                     progress: Callable[[str], None] = print, stop_after: Optional[int] = None) -> Path:
    """Trains into ``out_dir`` (see the module docstring); ``stop_after``: return after that epoch, as a killed run
    would (tests)."""
    out_dir = Path(out_dir)
    if (out_dir / ".done").is_file():
        progress(f"skip {out_dir} (done)")
        return out_dir
    check_run(public_dir, train_dir, valid_dir)
    args = plan_args(config, train_dir, out_dir)
    plan = plan_dp(args)
    if plan["ledger"]:  # before any work: a model that cannot be released is not trained
        check_plan_fits(plan["ledger"], plan, data_files(args.train_data_path_and_name_and_type, plan), out_dir)
    _, unit_ids, unit_keys, utt2unit = load_units(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()

    model, margs = load_model(public_dir, "cpu", model_file)
    public_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    freeze(model, config["freeze_param"])
    tokenize = token_ids_fn(margs)
    cache: Dict = {}
    train = {u.utt: u for u in encode_kaldi_dir(model, tokenize, train_dir, cache)}
    valid = encode_kaldi_dir(model, tokenize, valid_dir, cache)
    progress(f"encoded {len(cache)} utterances once ({len(train)} train, {len(valid)} valid) in "
             f"{time.time() - start:.1f}s; {plan['unit']} unit, q={plan['sample_rate']:.4g}, "
             f"{plan['planned_steps']} steps, sigma={plan['noise_multiplier']:.4g}, planned epsilon "
             f"{plan['planned_epsilon']:.4g}")

    torch.manual_seed(int(config.get("seed") or 0))
    for part in HEAD_PARTS:
        getattr(model, part).train()  # dropout as in ESPnet's train mode
    rt = HeadDpRuntime(plan, utt2unit if plan["unit"] == "speaker" else None)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], **(config.get("optim_conf") or {}))
    sched = None
    if config.get("scheduler") == "warmuplr":
        from espnet2.schedulers.warmup_lr import WarmupLR

        sched = WarmupLR(opt, **(config.get("scheduler_conf") or {}))
    sampler = DpBatchSampler(len(unit_ids), plan["sample_rate"], plan["steps_per_epoch"], plan["sampling"],
                             plan["seed"])
    nbest, patience = int(config["keep_nbest_models"]), config.get("patience")
    valid_hist, best, first = [], [], 1  # best: (loss, epoch, head state), best first
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["train"] != str(train_dir):
            raise ValueError(f"{ckpt_path}: written for {ckpt['train']}, not {train_dir}: remove it to restart")
        model.load_state_dict({**model.state_dict(), **ckpt["head"]})
        opt.load_state_dict(ckpt["adam"])
        if sched is not None:
            sched.load_state_dict(ckpt["scheduler"])
        rt.load_state_dict(ckpt["dp"])
        torch.set_rng_state(ckpt["torch_rng"])
        valid_hist, best, first = ckpt["valid"], ckpt["best"], ckpt["epoch"] + 1
        progress(f"resuming {out_dir} after epoch {ckpt['epoch']} ({rt.accountant.steps} steps accounted)")

    for epoch in range(first, int(plan["max_epoch"]) + 1):
        if patience is not None and best and epoch - 1 - best[0][1] > int(patience):
            progress(f"early stopping: no better valid loss since epoch {best[0][1]} (patience {patience})")
            break
        t_epoch = time.time()
        rt.begin_epoch(model, epoch)
        train_loss, n_utts = 0.0, 0
        for idx in sampler.epoch(epoch):
            keys = [k for u in idx for k in unit_keys[u] if k in train]  # too short to encode: no gradient
            stats = rt.step(model, keys, [train[k] for k in keys])
            opt.step()  # sees exactly the noisy averaged gradient written by rt.step
            if sched is not None:
                sched.step()
            opt.zero_grad()
            train_loss += stats["loss"] * stats["batch_utts"] if stats["batch_utts"] else 0.0
            n_utts += int(stats["batch_utts"])
        entry = rt.end_epoch(epoch)
        loss = rt.engine.mean_loss(valid)
        valid_hist.append(loss)
        best = sorted(best + [(loss, epoch, _head_state(model))], key=lambda x: (x[0], x[1]))[:nbest]
        _save(ckpt_path, {"train": str(train_dir), "epoch": epoch, "head": _head_state(model),
                          "adam": opt.state_dict(), "scheduler": None if sched is None else sched.state_dict(),
                          "dp": rt.state_dict(), "torch_rng": torch.get_rng_state(), "valid": valid_hist,
                          "best": best})
        # the training loss is an un-noised statistic of sensitive data: the operator's log only
        progress(f"epoch {epoch}/{plan['max_epoch']}: {entry['steps']} steps, epsilon {entry['epsilon']:.4g}, "
                 f"train loss {train_loss / max(n_utts, 1):.3f}, valid loss {loss:.3f}, "
                 f"{time.time() - t_epoch:.1f}s")
        if stop_after is not None and epoch >= stop_after:
            return out_dir

    public_config = yaml.safe_load((Path(public_dir) / CONFIG_FILE).read_text())
    cfg = teacher_config(public_config, config, train_dir, valid_dir, out_dir, str(Path(public_dir) / model_file))
    cfg.update({k: v for k, v in config.items() if k.startswith("dp_")})
    cfg.update(train_data_path_and_name_and_type=train_data(train_dir),
               valid_data_path_and_name_and_type=valid_data(valid_dir),
               trained_by="espnet_pate.bin.train_dpsgd_head (DP-SGD of the head over cached encoder outputs)")
    write_teacher_dir(out_dir, cfg, public_state, [s for _, _, s in best], valid_hist, mark_done=False)
    report = final_report(rt.plan, rt.accountant, rt.history)
    release_model(report, out_dir)
    (out_dir / ".done").touch()
    ckpt_path.unlink(missing_ok=True)
    progress(f"DP-SGD head finished in {time.time() - start:.1f}s: epsilon {report['epsilon']:.4g} at delta "
             f"{report['delta']:g} ({report['steps']} steps); {out_dir}")
    return out_dir

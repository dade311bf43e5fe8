"""DP-SGD as an ESPnet Trainer: ESPnet's loop, checkpoints, logging, resume and model averaging, with a DP step.

``DPSGDTrainer`` replaces only ``train_one_epoch`` (the step) and wraps ``run`` (accountant in the checkpoint,
final report).  Each step (../shared/PRIVACY.md, "DP-SGD"):

1. a batch of Poisson-sampled units (utterances, or speakers with all their utterances:
   ``espnet_pate.dpsgd.sampler``), possibly empty, arrives from the iterator as ``(utt_ids, batch)``;
2. each unit's gradient is computed exactly per example (``PerExampleGradients``: the model went through
   ``make_dp_exact`` in the Task's ``build_model``), summed over the unit's utterances, set to zero if it is not
   finite (a function of that unit alone), clipped to ``dp_clip_norm`` and summed over units (in physical chunks of
   at most ``dp_max_physical_batch_size`` utterances, a unit never split);
3. N(0, (sigma C)^2) is added and the sum divided by the *expected* number of units per step, q * N_units;
4. that tensor is written to ``p.grad`` and the optimizer steps: no ESPnet ``grad_clip`` (ignored), no
   ``grad_noise``, ``accum_grad`` and AMP (rejected), nothing else touches the gradient;
5. the accountant records the step (q, sigma), an empty batch included.

The accountant's ledger rides in the optimizer's ``state_dict`` (optimizer hooks), so ESPnet's ``checkpoint.pth``
carries it and ``--resume true`` restores it with the model: a resumed run composes exactly the steps that reach
the released model.  The steps of an interrupted epoch are discarded with that epoch's model and never reach an
output (except the operator's log lines).  At the end, ``dp_report.json`` and ``privacy.json`` are written in the
output directory and ``config.yaml`` gets the same report under ``dp_report``; ``privacy.json`` lists every noise
segment the run used (a resume with other settings adds one) and whether the final epsilon met the target.

With ``--dp_ledger`` (the sensitive data set's privacy ledger, ``espnet_pate.privacy.ledger``) a run whose planned
cost does not fit the ledger's remaining budget is refused before training, and the finished model is recorded
there (``espnet_pate.dpsgd.release``) before its privacy.json is written.

What the guarantee covers, and what is refused around it:

* The number of training units (utterances or speakers) is treated as public: the sampling rate q, the steps per
  epoch and the noise calibration are computed from it, and it appears in the plan and in config.yaml. The
  guarantee is for add/remove-one neighbours with that size taken as known.
* ``--use_wandb true`` is refused: it would send un-noised statistics of the sensitive data (losses, gradient
  norms) to a third party.
* ``--init_param`` must point into a model trained on public data only (its directory's privacy.json says
  mechanism ``public_only``): starting from a teacher, the non-private fine-tune or another DP-SGD model would
  compose with that model's cost, which this run's fresh accountant does not know.

DP options (command line and YAML, registered in ``add_arguments``) are described in ``add_arguments``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

from espnet2.train.trainer import Trainer, TrainerOptions
from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler
from espnet2.torch_utils.device_funcs import to_device
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import float_or_none, int_or_none, str_or_none
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

from espnet_pate.dpsgd.accounting import ACCOUNTANTS, DpSgdAccountant, calibrate_noise, compute_epsilon
from espnet_pate.dpsgd.model_fixes import CONV_NORMS
from espnet_pate.dpsgd.per_example import (
    METHODS,
    PerExampleGradients,
    add_noise,
    clip_and_sum,
    make_noise_generator,
    unit_index,
)
from espnet_pate.dpsgd.release import REPORT_FILE, check_plan_fits, data_files, record_dpsgd_model
from espnet_pate.dpsgd.sampler import SAMPLINGS, UNITS, DpIterFactory, build_units, read_keys, read_utt2spk
from espnet_pate.privacy.ledger import PrivacyLedger
from espnet_pate.report.privacy_json import PUBLIC_MECHANISMS, is_public_model, read_privacy_info, write_privacy_info

logger = logging.getLogger(__name__)  # never the root logger before ESPnet's basicConfig

STATE_KEY = "dp_sgd"  # key of the DP state inside the optimizer's state_dict (hence inside checkpoint.pth)
NOISE_STREAM = 2

DP_OPTION_DEFAULTS = dict(
    dp_clip_norm=1.0,
    dp_noise_multiplier=None,
    dp_target_epsilon=None,
    dp_delta=1e-5,
    dp_unit="utterance",
    dp_utt2spk=None,
    dp_sampling="poisson",
    dp_sample_rate=None,
    dp_steps_per_epoch=None,
    dp_accountant="rdp",
    dp_seed=None,
    dp_per_example_method="vmap",
    dp_max_physical_batch_size=32,
    dp_conv_norm="frozen_batch_norm",
    dp_ledger=None,
)

MODEL_SELECTION_NOTE = (
    "Checkpoint selection, early stopping and n-best averaging use the validation set only (held-out dev data, "
    "not sensitive): they are post-processing of the DP-SGD iterates and cost no privacy. Options that would rank "
    "epochs on training (sensitive) statistics are rejected.")
LOG_NOTE = (
    "Training logs and checkpoint.pth's reporter hold un-noised statistics of sensitive data (per-step loss, batch "
    "sizes, clipped fraction, gradient norms): for the operator only, never released. Released: the model files, "
    "config.yaml, privacy.json and dp_report.json.")


# ---------------------------------------------------------------------------------------------- options
def _coerce(name: str, value, kind, choices=None, allow_none=False):
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if allow_none:
            return None
        raise ValueError(f"--{name} is required")
    try:
        if kind is bool:
            v = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
        elif kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            v = int(value)
        else:
            v = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name}: cannot read {value!r} as {kind.__name__}") from None
    if choices is not None and v not in choices:
        raise ValueError(f"--{name} must be one of {list(choices)}, got {v!r}")
    return v


def dp_options(args: argparse.Namespace) -> Dict[str, object]:
    """The DP options of ``args`` type-checked and coerced (YAML values are not type-converted by ESPnet)."""
    g = lambda k: getattr(args, k, DP_OPTION_DEFAULTS[k])  # noqa: E731
    o = {
        "clip_norm": _coerce("dp_clip_norm", g("dp_clip_norm"), float),
        "noise_multiplier": _coerce("dp_noise_multiplier", g("dp_noise_multiplier"), float, allow_none=True),
        "target_epsilon": _coerce("dp_target_epsilon", g("dp_target_epsilon"), float, allow_none=True),
        "delta": _coerce("dp_delta", g("dp_delta"), float),
        "unit": _coerce("dp_unit", g("dp_unit"), str, UNITS),
        "utt2spk": _coerce("dp_utt2spk", g("dp_utt2spk"), str, allow_none=True),
        "sampling": _coerce("dp_sampling", g("dp_sampling"), str, SAMPLINGS),
        "sample_rate": _coerce("dp_sample_rate", g("dp_sample_rate"), float, allow_none=True),
        "steps_per_epoch": _coerce("dp_steps_per_epoch", g("dp_steps_per_epoch"), int, allow_none=True),
        "accountant": _coerce("dp_accountant", g("dp_accountant"), str, ACCOUNTANTS),
        "seed": _coerce("dp_seed", g("dp_seed"), int, allow_none=True),
        "per_example_method": _coerce("dp_per_example_method", g("dp_per_example_method"), str, METHODS),
        "max_physical_batch_size": _coerce("dp_max_physical_batch_size", g("dp_max_physical_batch_size"), int),
        "conv_norm": _coerce("dp_conv_norm", g("dp_conv_norm"), str, CONV_NORMS),
        "ledger": _coerce("dp_ledger", g("dp_ledger"), str, allow_none=True),
    }
    if not o["clip_norm"] > 0 or not math.isfinite(o["clip_norm"]):
        raise ValueError("--dp_clip_norm must be a positive number")
    if (o["noise_multiplier"] is None) == (o["target_epsilon"] is None):
        raise ValueError("give exactly one of --dp_noise_multiplier and --dp_target_epsilon")
    if o["noise_multiplier"] is not None and not o["noise_multiplier"] >= 0:
        raise ValueError("--dp_noise_multiplier must be >= 0")
    if o["target_epsilon"] is not None and not o["target_epsilon"] > 0:
        raise ValueError("--dp_target_epsilon must be > 0")
    if not 0 < o["delta"] < 1:
        raise ValueError("--dp_delta must be in (0, 1)")
    if o["sample_rate"] is not None and not 0 < o["sample_rate"] <= 1:
        raise ValueError("--dp_sample_rate must be in (0, 1]")
    if o["steps_per_epoch"] is not None and o["steps_per_epoch"] < 1:
        raise ValueError("--dp_steps_per_epoch must be >= 1")
    if o["max_physical_batch_size"] < 1:
        raise ValueError("--dp_max_physical_batch_size must be >= 1")
    return o


def train_keys_file(args: argparse.Namespace) -> str:
    shapes = list(getattr(args, "train_shape_file", None) or [])
    if shapes:
        return shapes[0]
    return args.train_data_path_and_name_and_type[0][0]


def utt2spk_file(args: argparse.Namespace, opts: Dict) -> str:
    return opts["utt2spk"] or str(DpIterFactory.default_utt2spk(args.train_data_path_and_name_and_type))


def load_units(args: argparse.Namespace, opts: Optional[Dict] = None):
    """``(keys, unit_ids, unit_keys, utt2unit)`` of the training data for the chosen privacy unit."""
    opts = opts or dp_options(args)
    keys = read_keys(train_keys_file(args))
    utt2spk = read_utt2spk(utt2spk_file(args, opts)) if opts["unit"] == "speaker" else None
    unit_ids, unit_keys = build_units(keys, opts["unit"], utt2spk)
    utt2unit = {k: u for u, ks in zip(unit_ids, unit_keys) for k in ks}
    return keys, unit_ids, unit_keys, utt2unit


@contextlib.contextmanager
def _quiet_absl():
    """dp_accounting warns (through absl) for every fractional RDP order it drops at large q: dropping orders only
    makes the epsilon larger (still an upper bound), so these warnings are silenced here."""
    lg = logging.getLogger("absl")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


@functools.lru_cache(maxsize=32)
def _calibrate(target: float, q: float, steps: int, delta: float, accountant: str) -> Tuple[float, float]:
    with _quiet_absl():
        return calibrate_noise(target, q, steps, delta, accountant)


def plan_dp(args: argparse.Namespace) -> Dict[str, object]:
    """Sampling rate, steps and noise multiplier (calibrated to the target before training), as a JSON-able dict.

    q defaults to batch_size / number of training utterances (for the speaker unit too: each speaker is drawn
    with probability q, so a step holds about batch_size utterances); steps per epoch to ``num_iters_per_epoch``
    or round(1/q); the budget is planned for ``max_epoch`` epochs (early stopping only spends less).
    """
    o = dp_options(args)
    keys, unit_ids, _unit_keys, _ = load_units(args, o)
    n_utt, n_units = len(keys), len(unit_ids)
    if n_utt == 0:
        raise ValueError(f"no training utterances in {train_keys_file(args)}")
    if o["sample_rate"] is not None:
        q = o["sample_rate"]
    else:
        q = min(1.0, float(args.batch_size) / n_utt)
    fixed = None
    if o["sampling"] == "shuffle":
        fixed = max(1, int(round(q * n_units)))
        q = fixed / n_units
    niter = getattr(args, "num_iters_per_epoch", None)
    niter = None if niter is None else _coerce("num_iters_per_epoch", niter, int, allow_none=True)
    steps_per_epoch = o["steps_per_epoch"] or niter or max(1, int(round(1.0 / q)))
    max_epoch = int(args.max_epoch)
    planned_steps = max_epoch * steps_per_epoch
    if o["delta"] >= 1.0 / n_units:
        raise ValueError(f"--dp_delta {o['delta']:g} must be below 1/N = {1.0 / n_units:.3g} "
                         f"({n_units} {o['unit']} units)")
    if o["target_epsilon"] is not None:
        sigma, planned_eps = _calibrate(o["target_epsilon"], q, planned_steps, o["delta"], o["accountant"])
        calibrated = True
    else:
        sigma = o["noise_multiplier"]
        with _quiet_absl():
            planned_eps = compute_epsilon(q, sigma, planned_steps, o["delta"], o["accountant"]) if sigma > 0 \
                else math.inf
        calibrated = False
    return {
        "mechanism": "dpsgd",
        "sampling": o["sampling"],
        "unit": o["unit"],
        "utt2spk": utt2spk_file(args, o) if o["unit"] == "speaker" else None,
        "num_utterances": n_utt,
        "num_units": n_units,
        "sample_rate": q,
        "expected_batch_units": q * n_units,
        "expected_batch_utterances": q * n_utt,
        "steps_per_epoch": steps_per_epoch,
        "max_epoch": max_epoch,
        "planned_steps": planned_steps,
        "clip_norm": o["clip_norm"],
        "noise_multiplier": float(sigma),
        "noise_calibrated_to_target": calibrated,
        "target_epsilon": o["target_epsilon"],
        "planned_epsilon": float(planned_eps),
        "delta": o["delta"],
        "accountant": o["accountant"],
        "seed": o["seed"],
        "per_example_method": o["per_example_method"],
        "conv_norm": o["conv_norm"],
        "max_physical_batch_size": o["max_physical_batch_size"],
        "ledger": o["ledger"],
    }


# --------------------------------------------------------------------------------------------- the step
def _chunks(unit_of_row: Sequence, max_rows: int, lengths: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Rows grouped by unit, packed greedily into chunks of <= max_rows rows (a unit is never split).

    With ``lengths``, units go in order of their longest utterance, so that a chunk pads little (vmap computes
    every example at the chunk's longest length); the sum over units does not depend on the order.
    """
    groups: Dict[object, List[int]] = {}
    for i, u in enumerate(unit_of_row):
        groups.setdefault(u, []).append(i)
    units = list(groups.values())
    if lengths is not None:
        units.sort(key=lambda rows: max(int(lengths[i]) for i in rows))
    chunks, cur = [], []
    for rows in units:
        if cur and len(cur) + len(rows) > max_rows:
            chunks.append(cur)
            cur = []
        cur = cur + rows
    if cur:
        chunks.append(cur)
    return chunks


def _subset(batch: Dict[str, torch.Tensor], rows: List[int]):
    idx = torch.tensor(rows, dtype=torch.long, device=batch["speech"].device)
    sl = batch["speech_lengths"][idx]
    tl = batch["text_lengths"][idx]
    sp = batch["speech"][idx][:, : int(sl.max())]
    tx = batch["text"][idx][:, : max(int(tl.max()), 1)]
    return sp, sl, tx, tl


class DpSgdRuntime:
    """What one DP-SGD training run carries between steps: the plan, accountant, noise generator, engine."""

    def __init__(self, plan: Dict, utt2unit: Optional[Dict[str, str]] = None):
        self.plan = dict(plan)
        self.utt2unit = utt2unit
        self.accountant = DpSgdAccountant(delta=plan["delta"], accountant=plan["accountant"])
        self.history: List[Dict[str, object]] = []
        self.generator: Optional[torch.Generator] = None
        self._engine: Optional[PerExampleGradients] = None
        self._engine_model = None
        self.resumed_from: Optional[Dict] = None

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, object]:
        return {"accountant": self.accountant.state_dict(), "history": list(self.history),
                "plan": dict(self.plan)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.accountant.load_state_dict(state["accountant"])
        self.history = list(state.get("history", []))
        old = state.get("plan", {})
        if old.get("unit", self.plan["unit"]) != self.plan["unit"]:
            raise RuntimeError(f"the checkpoint was trained with the {old.get('unit')} unit, this run uses "
                               f"{self.plan['unit']}: the two guarantees do not compose into one")
        self.resumed_from = {"steps": self.accountant.steps, "epochs": len(self.history)}
        changed = [k for k in ("sample_rate", "noise_multiplier", "clip_norm", "unit", "sampling", "delta",
                               "accountant", "num_units") if old.get(k) != self.plan.get(k)]
        if changed:
            logger.warning("DP-SGD resumed with different settings (%s): the accountant composes both, so the "
                           "final epsilon may exceed a target calibrated for this run alone",
                           ", ".join(f"{k}: {old.get(k)} -> {self.plan.get(k)}" for k in changed))
        if self.accountant.delta != self.plan["delta"] or self.accountant.accountant != self.plan["accountant"]:
            self.accountant.delta = self.plan["delta"]
            self.accountant.accountant = self.plan["accountant"]
        logger.info("DP-SGD accountant restored: %d steps over %d epochs", self.accountant.steps, len(self.history))

    # ---------------------------------------------------------------------------------------- epoch
    def begin_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        if self._engine is None or self._engine_model is not model:
            self._engine = PerExampleGradients(model, method=self.plan["per_example_method"])
            self._engine_model = model
        device = next(p for p in model.parameters()).device
        seed = self.plan.get("seed")
        if seed is None:
            self.generator = make_noise_generator(None, device=device)  # OS entropy
        else:
            seed = int(seed) % 2**64
            ss = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, int(epoch), NOISE_STREAM])
            self.generator = make_noise_generator(int(ss.generate_state(1, np.uint64)[0] >> 1), device=device)

    def end_epoch(self, epoch: int) -> Dict[str, object]:
        eps = self.epsilon()
        entry = {"epoch": int(epoch), "steps": self.accountant.steps, "epsilon": eps}
        self.history = [h for h in self.history if h["epoch"] < epoch] + [entry]
        return entry

    def epsilon(self) -> float:
        if self.accountant.steps == 0:
            return 0.0
        with _quiet_absl():
            return float(self.accountant.get_epsilon())

    # ----------------------------------------------------------------------------------------- step
    def _unit_grads(self, engine: PerExampleGradients, sp, sl, tx, tl, gids):
        """Unclipped gradient of each unit of a chunk ({name: (U, ...)}) and per-example losses (B,)."""
        idx, n_units = unit_index(gids, len(gids))
        if engine.method == "vmap":
            per, losses = engine.per_example_grads(sp, sl, tx, tl)
            if n_units != len(gids):
                per = {n: g.new_zeros((n_units,) + g.shape[1:]).index_add_(0, idx.to(g.device), g)
                       for n, g in per.items()}
            return per, losses
        # loop: one backward per unit (the model's own forward, auxiliary losses included); clip_norm=inf
        units, losses = [], torch.zeros(len(gids))
        for u in range(n_units):
            rows = (idx == u).nonzero().flatten()
            g, st = engine.clipped_grad_sum(sp[rows], sl[rows], tx[rows], tl[rows], math.inf)
            units.append(g)
            losses[rows] = st.losses.float().cpu()
        return {n: torch.stack([g[n] for g in units]) for n in units[0]}, losses

    def noisy_gradient(self, model: torch.nn.Module, utt_ids: Sequence[str], batch: Dict[str, torch.Tensor]
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
        """(sum of clipped unit gradients + N(0, (sigma C)^2)) / (q N_units), and operator statistics."""
        engine = self._engine
        assert engine is not None, "begin_epoch() first"
        p = self.plan
        C, sigma = float(p["clip_norm"]), float(p["noise_multiplier"])
        params = engine.trainable()
        total = {n: torch.zeros_like(t) for n, t in params.items()}
        B = len(utt_ids)
        norms, factors, losses, nonfinite = [], [], [], 0
        if B:
            gids = [self.utt2unit[u] for u in utt_ids] if p["unit"] == "speaker" else list(utt_ids)
            lengths = batch["speech_lengths"].tolist()
            for rows in _chunks(gids, int(p["max_physical_batch_size"]), lengths):
                sp, sl, tx, tl = _subset(batch, rows)
                per, l = self._unit_grads(engine, sp, sl, tx, tl, [gids[i] for i in rows])
                sq = sum(g.reshape(g.size(0), -1).double().pow(2).sum(1) for g in per.values())
                bad = ~torch.isfinite(sq)
                if bool(bad.any()):  # a unit's non-finite gradient contributes zero (depends on that unit alone)
                    nonfinite += int(bad.sum())
                    keep = (~bad).to(next(iter(per.values())).dtype)
                    per = {n: torch.nan_to_num(g) * keep.view(-1, *([1] * (g.dim() - 1))).to(g.device)
                           for n, g in per.items()}
                s, nrm, fac = clip_and_sum(per, C)
                for n in total:
                    total[n] += s[n]
                norms.append(nrm.cpu())
                factors.append(fac.cpu())
                losses.append(l.detach().float().cpu())
        noisy = add_noise(total, C, sigma, p["expected_batch_units"], self.generator)
        nrm = torch.cat(norms) if norms else torch.zeros(0)
        fac = torch.cat(factors) if factors else torch.zeros(0)
        ls = torch.cat(losses) if losses else torch.zeros(0)
        stats = {
            "loss": float(ls.mean()) if ls.numel() else float("nan"),
            "batch_utts": float(B),
            "batch_units": float(nrm.numel()),
            "unit_grad_norm_median": float(nrm.median()) if nrm.numel() else float("nan"),
            "clipped_fraction": float((fac < 1.0).float().mean()) if fac.numel() else float("nan"),
            "nonfinite_units": float(nonfinite),
        }
        return noisy, stats

    def step(self, model: torch.nn.Module, utt_ids: Sequence[str], batch: Dict[str, torch.Tensor]
             ) -> Dict[str, float]:
        """Write the noisy gradient into ``p.grad`` (None for frozen parameters) and record the step."""
        noisy, stats = self.noisy_gradient(model, utt_ids, batch)
        params = self._engine.trainable()
        for p in model.parameters():
            p.grad = None
        for n, t in params.items():
            t.grad = noisy[n].to(t.dtype)
        self.accountant.step(self.plan["sample_rate"], self.plan["noise_multiplier"])
        return stats


def write_privacy_claim(output_dir: Path, report: Dict) -> None:
    """privacy.json of a finished run from its report: every noise segment, and whether it met its target."""
    segments = [{"sample_rate": q, "noise_multiplier": s, "steps": n} for q, s, n in report["segments"]]
    described = "; ".join(f"{g['steps']} steps at q={g['sample_rate']:.4g}, sigma={g['noise_multiplier']:.4g}"
                          for g in segments) or "no steps"
    note = f"DP-SGD fine-tune, {report['sampling']} sampling, C={report['clip_norm']:g}: {described}"
    if report["sampling"] != "poisson":
        note += "; batches not Poisson-sampled: epsilon is NOT a proven bound"
    if report["seed"] is not None:
        note += "; fixed DP seed: not for release"
    write_privacy_info(
        output_dir, epsilon=report["epsilon"], delta=report["delta"], unit=report["unit"],
        mechanism="dpsgd" if report["sampling"] == "poisson" else "dpsgd_shuffle",
        accountant=report["accountant_details"].get("accountant", report["accountant"]), data_dependent=False,
        target_epsilon=report["target_epsilon"], met_target=report["within_target"], segments=segments,
        clip_norm=report["clip_norm"], steps=report["steps"], num_units_public=report["num_units"],
        ledger=report.get("ledger"), note=note)


# ------------------------------------------------------------------------------------------ options class
@dataclasses.dataclass
class DPSGDTrainerOptions(TrainerOptions):
    dp_plan: Dict
    dp_utt2unit: Optional[Dict]
    dp_runtime: Optional[DpSgdRuntime] = None


def _check_compatible(args: argparse.Namespace) -> None:
    bad = []
    if getattr(args, "grad_noise", False):
        bad.append("--grad_noise true (ESPnet's gradient noise is not the DP mechanism)")
    if int(getattr(args, "accum_grad", 1)) != 1:
        bad.append("--accum_grad != 1 (Poisson batches are logical batches; memory is bounded by "
                   "--dp_max_physical_batch_size)")
    if getattr(args, "use_amp", False):
        bad.append("--use_amp true")
    if getattr(args, "sharded_ddp", False) or getattr(args, "distributed", False) or int(args.ngpu) > 1:
        bad.append("distributed / multi-GPU training (one process only)")
    if getattr(args, "use_adapter", False):
        bad.append("--use_adapter true")
    if getattr(args, "use_wandb", False):
        bad.append("--use_wandb true (it would send un-noised statistics of the sensitive data to a third party)")
    for init in getattr(args, "init_param", None) or []:
        model_dir = Path(str(init).split(":")[0]).parent
        if not is_public_model(model_dir):
            mech = read_privacy_info(model_dir).get("mechanism", f"none: no {model_dir / 'privacy.json'}")
            bad.append(f"--init_param {init}: only a model trained on public data only can start DP-SGD (its "
                       f"privacy.json must say mechanism {' or '.join(PUBLIC_MECHANISMS)}; it says {mech}): a model "
                       "that has seen sensitive data would compose with its own cost, which a fresh accountant "
                       "does not know")
    if getattr(args, "multiple_iterator", False):
        bad.append("--multiple_iterator true")
    if getattr(args, "iterator_type", "sequence") != "sequence":
        bad.append("--iterator_type other than sequence")
    for crit in list(args.best_model_criterion or []):
        if crit and crit[0] != "valid":
            bad.append(f"--best_model_criterion {crit} (select models on the held-out valid set only)")
    es = args.early_stopping_criterion
    if getattr(args, "patience", None) is not None and es and es[0] != "valid":
        bad.append(f"--early_stopping_criterion {es} (valid set only)")
    vs = args.val_scheduler_criterion
    if vs and vs[0] != "valid":
        bad.append(f"--val_scheduler_criterion {vs} (valid set only)")
    train_paths = {str(Path(p).resolve()) for p, _n, _t in args.train_data_path_and_name_and_type}
    valid_paths = {str(Path(p).resolve()) for p, _n, _t in args.valid_data_path_and_name_and_type}
    if train_paths & valid_paths:
        bad.append("validation data is the training data (model selection would use sensitive data)")
    if bad:
        raise ValueError("DP-SGD trainer: unsupported settings:\n  " + "\n  ".join(bad))


# ------------------------------------------------------------------------------------------------ trainer
class DPSGDTrainer(Trainer):
    """ESPnet Trainer with the DP-SGD step (see the module docstring)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        d = DP_OPTION_DEFAULTS
        group = parser.add_argument_group("DP-SGD related (espnet_pate.dpsgd.trainer)")
        group.add_argument("--dp_clip_norm", type=float, default=d["dp_clip_norm"],
                           help="L2 clipping norm C of each unit's gradient (utterance, or summed over a speaker)")
        group.add_argument("--dp_noise_multiplier", type=float_or_none, default=d["dp_noise_multiplier"],
                           help="Noise multiplier sigma (noise std = sigma * C on the summed gradient). "
                                "Give this or --dp_target_epsilon")
        group.add_argument("--dp_target_epsilon", type=float_or_none, default=d["dp_target_epsilon"],
                           help="Calibrate sigma before training so that max_epoch epochs spend at most this "
                                "epsilon (at --dp_delta, with --dp_accountant)")
        group.add_argument("--dp_delta", type=float, default=d["dp_delta"],
                           help="delta of the (epsilon, delta) guarantee; must be below 1/N_units")
        group.add_argument("--dp_unit", type=str, default=d["dp_unit"], choices=list(UNITS),
                           help="Privacy unit: utterance, or speaker (speakers sampled, each speaker's summed "
                                "gradient clipped)")
        group.add_argument("--dp_utt2spk", type=str_or_none, default=d["dp_utt2spk"],
                           help="utt2spk for --dp_unit speaker (default: utt2spk beside the first training file)")
        group.add_argument("--dp_sampling", type=str, default=d["dp_sampling"], choices=list(SAMPLINGS),
                           help="poisson (each unit drawn independently with probability q at every step; what "
                                "the accountant assumes) or shuffle (fixed-size batches: the accountant's "
                                "assumption is broken and its epsilon is not a proven bound)")
        group.add_argument("--dp_sample_rate", type=float_or_none, default=d["dp_sample_rate"],
                           help="Sampling rate q (default: batch_size / number of training utterances)")
        group.add_argument("--dp_steps_per_epoch", type=int_or_none, default=d["dp_steps_per_epoch"],
                           help="Steps per epoch (default: num_iters_per_epoch, else round(1/q))")
        group.add_argument("--dp_accountant", type=str, default=d["dp_accountant"], choices=list(ACCOUNTANTS),
                           help="dp_accounting accountant: rdp (improved conversion) or pld")
        group.add_argument("--dp_seed", type=int_or_none, default=d["dp_seed"],
                           help="Seed of the sampling and the DP noise, for reproducible experiments only (the "
                                "report flags such a run as not for release). Default: operating-system entropy")
        group.add_argument("--dp_per_example_method", type=str, default=d["dp_per_example_method"],
                           choices=list(METHODS),
                           help="vmap (fast; transducer and auxiliary CTC losses) or loop (one backward per unit)")
        group.add_argument("--dp_max_physical_batch_size", type=int, default=d["dp_max_physical_batch_size"],
                           help="Most utterances per per-example-gradient pass (memory; a unit is never split)")
        group.add_argument("--dp_conv_norm", type=str, default=d["dp_conv_norm"], choices=list(CONV_NORMS),
                           help="make_dp_exact's treatment of BatchNorm (frozen_batch_norm keeps stock decoding)")
        group.add_argument("--dp_ledger", type=str_or_none, default=d["dp_ledger"],
                           help="The sensitive data set's privacy ledger (it must exist): a run that cannot fit its "
                                "remaining budget is refused before training, the finished model is recorded there")
        group.add_argument("--dp_report", action=NestedDictAction, default=None,
                           help="Output only: the DP plan and final report written into config.yaml; "
                                "ignored on input")

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> DPSGDTrainerOptions:
        _check_compatible(args)
        plan = plan_dp(args)  # recomputed (calibration cached): --dp_report is output only
        if plan["ledger"]:  # before any training: a model that cannot be released is not trained
            check_plan_fits(plan["ledger"], plan, data_files(args.train_data_path_and_name_and_type, plan),
                            args.output_dir)
        utt2unit = None
        if plan["unit"] == "speaker":
            utt2unit = load_units(args)[3]
        kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainerOptions)}
        return DPSGDTrainerOptions(**kwargs, dp_plan=plan, dp_utt2unit=utt2unit)

    # ------------------------------------------------------------------------------------------- run
    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        if not isinstance(trainer_options, DPSGDTrainerOptions):
            raise TypeError("DPSGDTrainer needs DPSGDTrainerOptions (build_options)")
        if distributed_option.distributed:
            raise ValueError("DP-SGD trainer: distributed training is not supported")
        if len(optimizers) != 1:
            raise ValueError("DP-SGD trainer: exactly one optimizer")
        if not isinstance(train_iter_factory, DpIterFactory):
            raise TypeError("DP-SGD trainer: the training iterator must be the DP sampler's (use the DP Task)")
        rt = DpSgdRuntime(trainer_options.dp_plan, trainer_options.dp_utt2unit)
        trainer_options.dp_runtime = rt
        p = rt.plan
        logger.info(
            "DP-SGD: unit=%s sampling=%s q=%.6g (expected %.2f units per step) steps/epoch=%d max_epoch=%d "
            "C=%g sigma=%.6g delta=%g accountant=%s; planned epsilon %.4g%s; ESPnet's grad_clip=%s is not used",
            p["unit"], p["sampling"], p["sample_rate"], p["expected_batch_units"], p["steps_per_epoch"],
            p["max_epoch"], p["clip_norm"], p["noise_multiplier"], p["delta"], p["accountant"],
            p["planned_epsilon"], f" (target {p['target_epsilon']})" if p["target_epsilon"] else "",
            trainer_options.grad_clip)
        if p["seed"] is not None:
            logger.warning("DP-SGD: --dp_seed %s fixes the sampling and the noise: reproducible experiment, "
                           "NOT for release", p["seed"])

        opt = optimizers[0]

        def _save(optimizer, state):
            state = dict(state)
            state[STATE_KEY] = rt.state_dict()
            return state

        def _load(optimizer, state):
            state = dict(state)
            dp = state.pop(STATE_KEY, None)
            if dp is None:
                raise RuntimeError("the checkpoint has no DP-SGD accountant state: it was not written by the "
                                   "DP-SGD trainer (refusing to resume and report a wrong epsilon)")
            rt.load_state_dict(dp)
            return state

        handles = [opt.register_state_dict_post_hook(_save), opt.register_load_state_dict_pre_hook(_load)]
        try:
            super().run(model=model, optimizers=optimizers, schedulers=schedulers,
                        train_iter_factory=train_iter_factory, valid_iter_factory=valid_iter_factory,
                        plot_attention_iter_factory=plot_attention_iter_factory,
                        trainer_options=trainer_options, distributed_option=distributed_option)
        finally:
            for h in handles:
                h.remove()
        cls.finalize(rt, Path(trainer_options.output_dir))

    @classmethod
    def finalize(cls, rt: DpSgdRuntime, output_dir: Path) -> Dict[str, object]:
        """Final epsilon into dp_report.json and config.yaml (``dp_report``); with a ledger, the model is recorded
        there (refused over budget: then no privacy.json); then privacy.json."""
        p = rt.plan
        acc = rt.accountant
        with _quiet_absl():
            details = acc.get_epsilon_details() if acc.steps else {"eps": 0.0, "steps": 0, "segments": []}
        eps = float(details["eps"])
        target = p["target_epsilon"]
        met_target = None if target is None else bool(eps <= target)
        report = dict(p)
        report.update({
            "status": "finished",
            "epsilon": eps,
            "steps": acc.steps,
            "epochs_trained": len(rt.history),
            "segments": acc.segments,
            "within_target": met_target,
            "history": rt.history,
            "accountant_details": {k: v for k, v in details.items() if k not in ("segments", "steps", "eps")},
            "data_dependent": False,
            "epsilon_is_proven_bound": p["sampling"] == "poisson",
            "seed_fixed_not_for_release": p["seed"] is not None,
            "model_selection": MODEL_SELECTION_NOTE,
            "logs": LOG_NOTE,
        })
        if target is not None and eps > target:
            logger.warning("DP-SGD: final epsilon %.4g exceeds the target %.4g (settings changed on resume?)",
                           eps, target)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        cfg = output_dir / "config.yaml"
        if cfg.exists():
            with cfg.open(encoding="utf-8") as f:
                conf = yaml.safe_load(f) or {}
            conf["dp_report"] = json.loads(json.dumps(report))  # plain types
            with cfg.open("w", encoding="utf-8") as f:
                yaml_no_alias_safe_dump(conf, f, indent=4, sort_keys=False)
        if p.get("ledger"):
            with PrivacyLedger(p["ledger"], create=False).exclusive():  # the release: record, then the claim
                _, new = record_dpsgd_model(p["ledger"], output_dir)
                logger.info("DP-SGD model %s in the privacy ledger %s", "recorded" if new else "already recorded",
                            p["ledger"])
                write_privacy_claim(output_dir, report)
        else:
            write_privacy_claim(output_dir, report)
        logger.info("DP-SGD finished: epsilon %.4g at delta %g (%s unit, %d steps, %s); report in %s", eps,
                    p["delta"], p["unit"], acc.steps, p["accountant"], output_dir / REPORT_FILE)
        return report

    # ---------------------------------------------------------------------------------------- epoch
    @classmethod
    def train_one_epoch(cls, model, iterator, optimizers, schedulers, scaler, reporter, summary_writer,
                        options, distributed_option) -> bool:
        rt: DpSgdRuntime = options.dp_runtime
        epoch = reporter.get_epoch()
        log_interval = options.log_interval
        if log_interval is None:
            try:
                log_interval = max(len(iterator) // 20, 10)
            except TypeError:
                log_interval = 100
        device = "cuda" if options.ngpu > 0 else "cpu"
        optimizer = optimizers[0]
        scheduler = schedulers[0]

        model.train()
        rt.begin_epoch(model, epoch)
        n_steps = len(iterator) if hasattr(iterator, "__len__") else None
        all_steps_are_invalid = True
        start_time = time.perf_counter()
        for iiter, (utt_ids, batch) in enumerate(reporter.measure_iter_time(iterator, "iter_time"), 1):
            assert isinstance(batch, dict), type(batch)
            if options.no_forward_run:
                all_steps_are_invalid = False
                continue
            batch = to_device(batch, device)
            with reporter.measure_time("dp_grad_time"):
                stats = rt.step(model, utt_ids, batch)
            weight = stats.pop("batch_utts")
            reporter.register({"loss": stats.pop("loss")}, weight)
            reporter.register(stats)
            with reporter.measure_time("optim_step_time"):
                optimizer.step()  # sees exactly the noisy averaged gradient written by rt.step
                if isinstance(scheduler, AbsBatchStepScheduler):
                    scheduler.step()
            optimizer.zero_grad()
            all_steps_are_invalid = False
            reporter.register(dict({f"optim0_lr{j}": pg["lr"] for j, pg in enumerate(optimizer.param_groups)
                                    if "lr" in pg}, train_time=time.perf_counter() - start_time))
            if n_steps is not None and iiter == n_steps:
                reporter.register({"dp_epsilon": rt.epsilon(), "dp_steps": float(rt.accountant.steps)})
            start_time = time.perf_counter()
            reporter.next()
            if iiter % log_interval == 0:
                logging.info(reporter.log_message(-log_interval))
                if summary_writer is not None:
                    reporter.tensorboard_add_scalar(summary_writer, -log_interval)
                if options.use_wandb:
                    reporter.wandb_log()
        entry = rt.end_epoch(epoch)
        logging.info(f"DP-SGD after epoch {epoch}: {entry['steps']} steps, epsilon {entry['epsilon']:.4g} "
                     f"(delta {rt.plan['delta']:g}, {rt.plan['accountant']})")
        return all_steps_are_invalid

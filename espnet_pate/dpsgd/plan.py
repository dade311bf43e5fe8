"""The DP-SGD plan, from public information only: sampling rate, steps, and the noise multiplier for a target epsilon.

``noise_for_budget`` is the one place that turns a budget into a noise multiplier (and a noise multiplier into the
epsilon it spends): ``plan_dp`` uses it for a training run, ``espnet_pate.bin.dp_epsilon`` for its answers.
``spent_epsilon`` reads the epsilon of the steps a run has taken (its per-epoch log and final report).

The number of training units (utterances or speakers) is treated as public: the guarantee is for add/remove-one
neighbours with that size taken as known.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
from typing import Dict, Optional, Tuple

from espnet_pate.dpsgd.accounting import DpSgdAccountant, calibrate_noise, compute_epsilon
from espnet_pate.dpsgd.options import coerce, dp_options
from espnet_pate.data.kaldi_dir import read_table
from espnet_pate.dpsgd.sampler import DpIterFactory, build_units

__all__ = ["load_units", "noise_for_budget", "plan_dp", "quiet_absl", "spent_epsilon", "train_keys_file"]


@contextlib.contextmanager
def quiet_absl():
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
    with quiet_absl():
        return calibrate_noise(target, q, steps, delta, accountant)


def noise_for_budget(q: float, steps: int, delta: float, accountant: str, target_epsilon: Optional[float] = None,
                     noise_multiplier: Optional[float] = None) -> Tuple[float, float]:
    """``(noise_multiplier, epsilon)`` of ``steps`` Poisson-subsampled Gaussian steps at rate ``q``: sigma calibrated
    to ``target_epsilon`` (the epsilon then never above it), or the epsilon that ``noise_multiplier`` spends."""
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ValueError("give exactly one of target_epsilon and noise_multiplier")
    if target_epsilon is not None:
        return _calibrate(float(target_epsilon), q, steps, delta, accountant)
    if noise_multiplier == 0:
        return 0.0, math.inf
    with quiet_absl():
        return float(noise_multiplier), compute_epsilon(q, noise_multiplier, steps, delta, accountant)


def spent_epsilon(accountant: DpSgdAccountant) -> Dict[str, object]:
    """dp_accounting's details of the steps taken (``eps`` 0 before the first step)."""
    if accountant.steps == 0:
        return {"eps": 0.0, "steps": 0, "segments": []}
    with quiet_absl():
        return accountant.get_epsilon_details()


def train_keys_file(args: argparse.Namespace) -> str:
    shapes = list(getattr(args, "train_shape_file", None) or [])
    if shapes:
        return shapes[0]
    return args.train_data_path_and_name_and_type[0][0]


def _utt2spk_file(args: argparse.Namespace, opts: Dict) -> str:
    return opts["utt2spk"] or str(DpIterFactory.default_utt2spk(args.train_data_path_and_name_and_type))


def load_units(args: argparse.Namespace, opts: Optional[Dict] = None):
    """``(keys, unit_ids, unit_keys, utt2unit)`` of the training data for the chosen privacy unit."""
    opts = opts or dp_options(args)
    keys = list(read_table(train_keys_file(args)))  # file order; a duplicated id raises
    utt2spk = read_table(_utt2spk_file(args, opts)) if opts["unit"] == "speaker" else None
    unit_ids, unit_keys = build_units(keys, opts["unit"], utt2spk)
    utt2unit = {k: u for u, ks in zip(unit_ids, unit_keys) for k in ks}
    return keys, unit_ids, unit_keys, utt2unit


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
    if o["sampling"] == "shuffle":
        q = max(1, int(round(q * n_units))) / n_units
    niter = coerce("num_iters_per_epoch", getattr(args, "num_iters_per_epoch", None), int, allow_none=True)
    steps_per_epoch = o["steps_per_epoch"] or niter or max(1, int(round(1.0 / q)))
    max_epoch = int(args.max_epoch)
    planned_steps = max_epoch * steps_per_epoch
    if o["delta"] >= 1.0 / n_units:
        raise ValueError(f"--dp_delta {o['delta']:g} must be below 1/N = {1.0 / n_units:.3g} "
                         f"({n_units} {o['unit']} units)")
    sigma, planned_eps = noise_for_budget(q, planned_steps, o["delta"], o["accountant"], o["target_epsilon"],
                                          o["noise_multiplier"])
    return {
        "mechanism": "dpsgd",
        "sampling": o["sampling"],
        "unit": o["unit"],
        "utt2spk": _utt2spk_file(args, o) if o["unit"] == "speaker" else None,
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
        "noise_calibrated_to_target": o["target_epsilon"] is not None,
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

"""The ``--dp_*`` options of the DP-SGD trainer: one table gives each option's type, default, choices and help,
read both by the argument parser (command line and YAML) and by ``dp_options``, which type-checks the values
(ESPnet does not type-convert YAML values: ``1e-5`` arrives as a string).
"""
from __future__ import annotations

import argparse
import math
from typing import Dict, NamedTuple, Optional, Sequence

from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import float_or_none, int_or_none, str_or_none

from espnet_pate.dpsgd.accounting import ACCOUNTANTS
from espnet_pate.dpsgd.model_fixes import CONV_NORMS
from espnet_pate.dpsgd.per_example import METHODS
from espnet_pate.dpsgd.sampler import SAMPLINGS
from espnet_pate.privacy.units import PRIVACY_UNITS

__all__ = ["DP_OPTIONS", "add_dp_arguments", "coerce", "dp_options"]


class DpOption(NamedTuple):
    name: str
    kind: type
    default: object
    help: str
    choices: Optional[Sequence] = None
    nullable: bool = False


DP_OPTIONS = (
    DpOption("dp_clip_norm", float, 1.0,
             "L2 clipping norm C of each unit's gradient (utterance, or summed over a speaker)"),
    DpOption("dp_noise_multiplier", float, None,
             "Noise multiplier sigma (noise std = sigma * C on the summed gradient). Give this or --dp_target_epsilon",
             nullable=True),
    DpOption("dp_target_epsilon", float, None,
             "Calibrate sigma before training so that max_epoch epochs spend at most this epsilon (at --dp_delta, "
             "with --dp_accountant)", nullable=True),
    DpOption("dp_delta", float, 1e-5, "delta of the (epsilon, delta) guarantee; must be below 1/N_units"),
    DpOption("dp_unit", str, "utterance",
             "Privacy unit: utterance, or speaker (speakers sampled, each speaker's summed gradient clipped)",
             PRIVACY_UNITS),
    DpOption("dp_utt2spk", str, None,
             "utt2spk for --dp_unit speaker (default: utt2spk beside the first training file)", nullable=True),
    DpOption("dp_sampling", str, "poisson",
             "poisson (each unit drawn independently with probability q at every step; what the accountant "
             "assumes) or shuffle (fixed-size batches: the accountant's assumption is broken and its epsilon is not "
             "a proven bound)", SAMPLINGS),
    DpOption("dp_sample_rate", float, None,
             "Sampling rate q (default: batch_size / number of training utterances)", nullable=True),
    DpOption("dp_steps_per_epoch", int, None, "Steps per epoch (default: num_iters_per_epoch, else round(1/q))",
             nullable=True),
    DpOption("dp_accountant", str, "rdp", "dp_accounting accountant: rdp (improved conversion) or pld", ACCOUNTANTS),
    DpOption("dp_seed", int, None,
             "Seed of the sampling and the DP noise, for reproducible experiments only (the report flags such a run "
             "as not for release). Default: operating-system entropy", nullable=True),
    DpOption("dp_per_example_method", str, "vmap",
             "vmap (fast; transducer and auxiliary CTC losses) or loop (one backward per unit)", METHODS),
    DpOption("dp_max_physical_batch_size", int, 32,
             "Most utterances per per-example-gradient pass (memory; a unit is never split)"),
    DpOption("dp_conv_norm", str, "frozen_batch_norm",
             "make_dp_exact's treatment of BatchNorm (frozen_batch_norm keeps stock decoding)", CONV_NORMS),
    DpOption("dp_ledger", str, None,
             "The sensitive data set's privacy ledger (it must exist): a run that cannot fit its remaining budget is "
             "refused before training, the finished model is recorded there", nullable=True),
)
_NULLABLE_TYPES = {float: float_or_none, int: int_or_none, str: str_or_none}


def add_dp_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DP-SGD related (espnet_pate.dpsgd.options)")
    for o in DP_OPTIONS:
        kw = {"choices": list(o.choices)} if o.choices else {}
        group.add_argument(f"--{o.name}", type=_NULLABLE_TYPES[o.kind] if o.nullable else o.kind, default=o.default,
                           help=o.help, **kw)
    group.add_argument("--dp_report", action=NestedDictAction, default=None,
                       help="Output only: the DP plan and final report written into config.yaml; ignored on input")


def coerce(name: str, value, kind, choices=None, allow_none=False):
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if allow_none:
            return None
        raise ValueError(f"--{name} is required")
    try:
        if kind is int:
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
    """The DP options of ``args``, type-checked, keyed without their ``dp_`` prefix."""
    o = {opt.name[len("dp_"):]: coerce(opt.name, getattr(args, opt.name, opt.default), opt.kind, opt.choices,
                                       allow_none=opt.nullable)
         for opt in DP_OPTIONS}
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

"""Settings of a DP-SGD head run, from the same YAML the ESPnet DP trainer reads (conf/train_dpsgd_head*.yaml
resolved over train_dpsgd*.yaml and model*.yaml), and the plan ``plan_dp`` makes of them.

``plan_args`` gives ``plan_dp`` the Namespace ESPnet's DP task would hold for the same run (the same training
files as ``local/train_asr.sh`` passes, batch size, epochs, ``--dp_*`` options): the plan, hence the noise and the
ledger's release id (``release.release_id``: plan keys, system directory name, SHA-256 of those files), is the one
the ESPnet trainer would compute.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from espnet_pate.asr.train_config import resolve_config
from espnet_pate.dpsgd.options import DP_OPTIONS, dp_options
from espnet_pate.report.privacy_json import PUBLIC_MECHANISMS, is_public_model, read_privacy_info

__all__ = ["check_run", "load_head_config", "plan_args", "train_data", "valid_data"]

DEFAULTS = {"batch_size": 16, "max_epoch": 10, "patience": None, "optim": "adam", "optim_conf": {"lr": 1e-3},
            "scheduler": None, "scheduler_conf": {}, "keep_nbest_models": 3,
            "best_model_criterion": [["valid", "loss", "min"]], "seed": 0, "freeze_param": []}


def load_head_config(path: os.PathLike | str, overrides: Optional[Mapping] = None) -> Dict:
    """The resolved YAML with ``overrides`` (e.g. the command line's ``dp_target_epsilon``) on top; unsupported
    settings raise."""
    cfg = {**DEFAULTS, **resolve_config(path), **{k: v for k, v in (overrides or {}).items()}}
    problems = []
    if cfg["optim"] != "adam":
        problems.append(f"optim {cfg['optim']!r} (only adam)")
    if cfg["scheduler"] not in (None, "warmuplr"):
        problems.append(f"scheduler {cfg['scheduler']!r} (warmuplr or null)")
    if [list(c) for c in cfg["best_model_criterion"]][:1] != [["valid", "loss", "min"]]:
        problems.append("best_model_criterion must be [[valid, loss, min]] (held-out dev only)")
    if "encoder" not in (cfg["freeze_param"] or []):
        problems.append(f"freeze_param {cfg['freeze_param']} does not freeze the encoder (cached outputs)")
    if int(cfg.get("accum_grad", 1)) != 1 or cfg.get("grad_noise") or cfg.get("use_amp"):
        problems.append("accum_grad, grad_noise and use_amp are not DP-SGD settings")
    if float((cfg.get("model_conf") or {}).get("auxiliary_lm_loss_weight", 0.0)) > 0:
        problems.append("auxiliary_lm_loss_weight > 0 is not implemented")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return cfg


def train_data(data_dir: os.PathLike | str) -> List[List[str]]:
    """ESPnet's ``train_data_path_and_name_and_type`` as ``local/train_asr.sh`` gives it."""
    return [[f"{data_dir}/wav.scp", "speech", "sound"], [f"{data_dir}/text", "text", "text"]]


valid_data = train_data


def plan_args(cfg: Mapping, train_dir: os.PathLike | str, out_dir: os.PathLike | str) -> argparse.Namespace:
    """The Namespace ``plan_dp``/``dp_options`` read, as ESPnet's DP task would hold it for this run."""
    ns = argparse.Namespace(**{o.name: cfg.get(o.name, o.default) for o in DP_OPTIONS})
    ns.batch_size, ns.max_epoch = cfg["batch_size"], cfg["max_epoch"]
    ns.num_iters_per_epoch = cfg.get("num_iters_per_epoch")
    ns.train_data_path_and_name_and_type = train_data(train_dir)
    ns.train_shape_file = []  # the keys of wav.scp: the shape file of local/train_asr.sh has the same keys
    ns.output_dir = str(out_dir)
    dp_options(ns)  # type checks before anything is read
    return ns


def check_run(public_dir: os.PathLike | str, train_dir: os.PathLike | str, valid_dir: os.PathLike | str) -> None:
    """What the ESPnet DP trainer refuses around the mechanism: a start model that saw sensitive data, and
    model selection on the training data."""
    if not is_public_model(public_dir):
        mech = read_privacy_info(public_dir).get("mechanism", f"none: no {Path(public_dir) / 'privacy.json'}")
        raise ValueError(f"--public {public_dir}: only a model trained on public data only can start DP-SGD (its "
                         f"privacy.json must say mechanism {' or '.join(PUBLIC_MECHANISMS)}; it says {mech})")
    if Path(train_dir).resolve() == Path(valid_dir).resolve():
        raise ValueError("the validation data is the training data (model selection would use sensitive data)")

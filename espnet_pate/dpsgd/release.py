"""A DP-SGD model as a release of the sensitive data set's privacy ledger.

Before training, ``check_plan_fits`` refuses a run whose planned cost (the plan's one noise segment) cannot fit
what the ledger has left, so no CPU is spent on a model that could not be released. After training,
``record_dpsgd_model`` records what the run really spent: the RDP curve, on the ledger's order grid, of every
noise segment it used (dp_accounting's RdpAccountant with the ledger's orders, the Poisson-subsampled Gaussian of
each segment), under a release id made from the run's settings and its training data, with the SHA-256 of the
released model file as outputs. A rerun finds the id and records nothing twice; a retrained model under the same
id (fresh noise, other bytes) is refused as a conflict.

Both read the same things: the plan (``plan_dp``'s dict, or ``dp_report.json`` after training), the training data
files (ESPnet's ``train_data_path_and_name_and_type``, plus utt2spk for the speaker unit) and the system
directory's name. The data enter the id through the SHA-256 of those files: the id is kept in the ledger, an
operator file, and never written into a released file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import yaml

from espnet_pate.asr.decode import MODEL_FILE  # what stage 7 decodes and the model zoo packs
from espnet_pate.dpsgd.accounting import rdp_curve
from espnet_pate.privacy.ledger import BudgetExceededError, PrivacyLedger, Release, file_sha256, make_release_id

REPORT_FILE = "dp_report.json"
MECHANISM = "dpsgd"
# the settings that make a run: its id does not move when a derived or cosmetic field is added to the plan
ID_KEYS = ("sampling", "unit", "num_units", "sample_rate", "steps_per_epoch", "max_epoch", "planned_steps",
           "clip_norm", "noise_multiplier", "target_epsilon", "delta", "accountant", "seed")

__all__ = ["MODEL_FILE", "REPORT_FILE", "check_plan_fits", "data_files", "record_dpsgd_model", "release_id"]


def data_files(train_data_path_and_name_and_type: Iterable[Sequence[str]], plan: Dict) -> List[str]:
    """The files that define the training data: ESPnet's training inputs, and utt2spk for the speaker unit."""
    files = [str(entry[0]) for entry in train_data_path_and_name_and_type]
    if plan.get("unit") == "speaker" and plan.get("utt2spk"):
        files.append(str(plan["utt2spk"]))
    return files


def release_id(plan: Dict, files: Sequence[str], system_dir: os.PathLike | str) -> Tuple[str, Dict, Dict]:
    """(release id, params, inputs) of the DP-SGD model trained into ``system_dir`` with ``plan`` on ``files``."""
    params = {k: plan.get(k) for k in ID_KEYS}
    params["system"] = Path(system_dir).name
    inputs = {"train_data_sha256": [file_sha256(f) for f in files]}
    return make_release_id(_what(system_dir), MECHANISM, params, inputs), params, inputs


def _what(system_dir) -> str:
    return f"DP-SGD model {Path(system_dir).name}"


def check_plan_fits(ledger_path: str, plan: Dict, files: Sequence[str], system_dir: os.PathLike | str) -> None:
    """Refuse (``BudgetExceededError``) a run whose planned cost does not fit the ledger; a run already recorded
    (a rerun of a finished one) passes."""
    ledger = PrivacyLedger(ledger_path, create=False)
    rid, _, _ = release_id(plan, files, system_dir)
    if ledger.get(rid) is not None:
        return
    planned = rdp_curve([(plan["sample_rate"], plan["noise_multiplier"], plan["planned_steps"])], ledger.orders)
    fits, total = ledger.check_fits(planned)
    if not fits:
        spent = ledger.total()
        raise BudgetExceededError(
            f"DP-SGD into {system_dir}: its planned cost ({plan['planned_steps']} steps, q={plan['sample_rate']:.4g}, "
            f"sigma={plan['noise_multiplier']:.4g}) would bring {ledger_path} to eps={total:.4f} at delta="
            f"{ledger.delta:g}, above its budget eps={ledger.eps_budget:g} ({len(ledger.releases)} releases have "
            f"spent eps={spent.eps:.4f}). Nothing was trained: lower --dp_target_epsilon, or release less elsewhere.")


def record_dpsgd_model(ledger_path: str, system_dir: os.PathLike | str) -> Tuple[Release, bool]:
    """Record the finished DP-SGD model of ``system_dir`` (its dp_report.json, config.yaml and model file) in the
    ledger; returns (release, spent_now). Refused over budget (nothing recorded) or on a conflicting id."""
    system_dir = Path(system_dir)
    report_path, config_path, model = system_dir / REPORT_FILE, system_dir / "config.yaml", system_dir / MODEL_FILE
    for path in (report_path, config_path, model):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; {system_dir} is not a finished DP-SGD model")
    report = json.loads(report_path.read_text())
    if report.get("status") != "finished" or "segments" not in report:
        raise ValueError(f"{report_path}: not the report of a finished DP-SGD run")
    with config_path.open(encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    files = data_files(config["train_data_path_and_name_and_type"], report)
    rid, params, _ = release_id(report, files, system_dir)
    ledger = PrivacyLedger(ledger_path, create=False)
    segments = [(float(q), float(s), int(n)) for q, s, n in report["segments"]]
    details = {"segments": [list(s) for s in segments], "epsilon_own": report.get("epsilon"),
               "delta_own": report.get("delta"), "accountant_own": report.get("accountant"),
               "epsilon_is_proven_bound": report.get("epsilon_is_proven_bound"), "model_file": MODEL_FILE,
               "system_dir": str(system_dir)}
    return ledger.record(_what(system_dir), MECHANISM, params, rdp_curve(segments, ledger.orders),
                         int(report["steps"]), release_id=rid, data_dependent=False,
                         outputs=f"sha256:{file_sha256(model)}", details=details)

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

``release_model`` is the end of a training run: the final report (``final_report``: the plan, the epsilon of every
step taken, the notes on what is released) into dp_report.json and config.yaml (``dp_report``); with a ledger the
model is recorded there (refused over budget: then no privacy.json); then privacy.json, listing every noise
segment and whether the final epsilon met the target.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import yaml
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

from espnet_pate.asr.decode import MODEL_FILE  # what stage 7 decodes and the model zoo packs
from espnet_pate.dpsgd.accounting import rdp_curve
from espnet_pate.dpsgd.plan import spent_epsilon
from espnet_pate.privacy.digests import file_sha256, make_release_id
from espnet_pate.privacy.ledger import BudgetExceededError, PrivacyLedger, Release
from espnet_pate.report.privacy_json import write_privacy_info

logger = logging.getLogger(__name__)

REPORT_FILE = "dp_report.json"
MECHANISM = "dpsgd"
# the settings that make a run: its id does not move when a derived or cosmetic field is added to the plan
ID_KEYS = ("sampling", "unit", "num_units", "sample_rate", "steps_per_epoch", "max_epoch", "planned_steps",
           "clip_norm", "noise_multiplier", "target_epsilon", "delta", "accountant", "seed")

MODEL_SELECTION_NOTE = (
    "Checkpoint selection, early stopping and n-best averaging use the validation set only (held-out dev data, "
    "not sensitive): they are post-processing of the DP-SGD iterates and cost no privacy. Options that would rank "
    "epochs on training (sensitive) statistics are rejected.")
LOG_NOTE = (
    "Training logs and checkpoint.pth's reporter hold un-noised statistics of sensitive data (per-step loss, batch "
    "sizes, clipped fraction, gradient norms): for the operator only, never released. Released: the model files, "
    "config.yaml, privacy.json and dp_report.json.")

__all__ = ["MODEL_FILE", "REPORT_FILE", "check_plan_fits", "data_files", "final_report", "record_dpsgd_model",
           "release_id", "release_model"]


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


def final_report(plan: Dict, accountant, history: List[Dict]) -> Dict[str, object]:
    """The plan with what the run spent: the epsilon of every step taken (``accountant``), per-epoch history."""
    details = spent_epsilon(accountant)
    eps = float(details["eps"])
    target = plan["target_epsilon"]
    report = dict(plan)
    report.update({
        "status": "finished",
        "epsilon": eps,
        "steps": accountant.steps,
        "epochs_trained": len(history),
        "segments": accountant.segments,
        "within_target": None if target is None else bool(eps <= target),
        "history": history,
        "accountant_details": {k: v for k, v in details.items() if k not in ("segments", "steps", "eps")},
        "data_dependent": False,
        "epsilon_is_proven_bound": plan["sampling"] == "poisson",
        "seed_fixed_not_for_release": plan["seed"] is not None,
        "model_selection": MODEL_SELECTION_NOTE,
        "logs": LOG_NOTE,
    })
    if target is not None and eps > target:
        logger.warning("DP-SGD: final epsilon %.4g exceeds the target %.4g (settings changed on resume?)", eps, target)
    return report


def release_model(report: Dict, output_dir: Path) -> None:
    """dp_report.json, config.yaml's ``dp_report``, the ledger record (with a ledger), then privacy.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    cfg = output_dir / "config.yaml"
    if cfg.exists():
        with cfg.open(encoding="utf-8") as f:
            conf = yaml.safe_load(f) or {}
        conf["dp_report"] = json.loads(json.dumps(report))  # plain types
        with cfg.open("w", encoding="utf-8") as f:
            yaml_no_alias_safe_dump(conf, f, indent=4, sort_keys=False)
    ledger = report.get("ledger")
    if ledger:
        with PrivacyLedger(ledger, create=False).exclusive():  # the release: record, then the claim
            _, new = record_dpsgd_model(ledger, output_dir)
            logger.info("DP-SGD model %s in the privacy ledger %s", "recorded" if new else "already recorded", ledger)
            write_privacy_claim(output_dir, report)
    else:
        write_privacy_claim(output_dir, report)


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

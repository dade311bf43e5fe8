"""Membership inference against one released model: both attacks, both units, metrics and the DP bound check.

Members: the model's sensitive training set (every utterance and speaker of ``sensitive``: DP-SGD and the
non-private model trained on all of it, a PATE student's labels came from teachers on all of it). Non-members:
held-out utterances of the same distribution that no model trained or selected checkpoints on (the recipe passes
``test``: ``dev`` chooses the baselines' checkpoints and validates the teachers, so it is not fully unseen).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Sequence

import numpy as np

from espnet_pate.attacks import membership, roc
from espnet_pate.attacks.dp_bound import PrivacyBoundViolation, bound_checks, bound_for, violation_message
from espnet_pate.attacks.nll_cache import cached_nlls
from espnet_pate.data.kaldi_dir import read_kaldi_dir
from espnet_pate.report.privacy_json import read_privacy_info

__all__ = ["audit_model", "checks_per_model", "raise_on_violations"]

UNITS = ("utterance", "speaker")


def _scores(attack: str, target, shadows, utts: Sequence[str]) -> np.ndarray:
    if attack == "loss":
        return membership.loss_scores(target, utts)
    return membership.lira_scores(target, shadows, utts)


def audit_model(model_dir: os.PathLike | str, shadow_dirs: Sequence[os.PathLike | str],
                member_dir: os.PathLike | str, nonmember_dir: os.PathLike | str, cache_dir: os.PathLike | str,
                loaded: Dict | None = None, reps: int = 1000, seed: int = 0, alpha: float = 0.05,
                family: int | None = None, progress: Callable[[str], None] = print) -> Dict:
    """The audit record of one model. An attack that beats the model's released claim is listed in
    ``record["violations"]``: the caller writes the record, then fails (``raise_on_violations``). The bound
    checks hold a familywise error of ``alpha`` over ``family`` checks (default: this model's own; an audit of
    several models passes their total, ``checks_per_model`` each)."""
    loaded = {} if loaded is None else loaded
    members, nonmembers = read_kaldi_dir(member_dir), read_kaldi_dir(nonmember_dir)
    overlap = set(members.utt2spk.values()) & set(nonmembers.utt2spk.values())
    if overlap:
        raise ValueError(f"{member_dir} and {nonmember_dir} share speakers {sorted(overlap)[:3]}: non-members "
                         "must be speakers no model trained on")
    utts = {"member": members.utt_ids, "nonmember": nonmembers.utt_ids}
    utt2spk = {**members.utt2spk, **nonmembers.utt2spk}

    def nlls(model):
        return {**cached_nlls(model, member_dir, cache_dir, loaded, progress),
                **cached_nlls(model, nonmember_dir, cache_dir, loaded, progress)}

    target, shadows = nlls(model_dir), [nlls(s) for s in shadow_dirs]
    claim = read_privacy_info(model_dir)
    max_k = max(len(v) for v in members.spk2utt().values())
    record: Dict = {"system": str(model_dir), "claim": claim, "members": str(member_dir),
                    "nonmembers": str(nonmember_dir), "shadow_models": [str(s) for s in shadow_dirs],
                    "bound_check": {"familywise_alpha": alpha, "family": family or checks_per_model()},
                    "results": [], "violations": []}
    for attack in membership.ATTACKS:
        s_mem = _scores(attack, target, shadows, utts["member"])
        s_non = _scores(attack, target, shadows, utts["nonmember"])
        for unit in UNITS:
            if unit == "speaker":
                a = list(membership.speaker_scores(utts["member"], s_mem, utt2spk).values())
                b = list(membership.speaker_scores(utts["nonmember"], s_non, utt2spk).values())
            else:
                a, b = s_mem, s_non
            summary = roc.summarise(a, b, reps=reps, seed=seed)
            bound = bound_for(claim, unit, max_k)
            label = f"{model_dir}: {attack} attack at the {unit} level"
            checks = bound_checks(summary, bound, alpha, family or checks_per_model())
            message = violation_message(checks, bound, label)
            if message:
                record["violations"].append(message)
            record["results"].append({"attack": attack, "unit": unit, **summary, "bound": bound,
                                      "bound_checks": checks})
    return record


def checks_per_model(fprs=roc.FPRS) -> int:
    return len(membership.ATTACKS) * len(UNITS) * len(fprs)


def raise_on_violations(records: Sequence[Dict]) -> None:
    messages = [m for r in records for m in r["violations"]]
    if messages:
        raise PrivacyBoundViolation("\n".join(messages))

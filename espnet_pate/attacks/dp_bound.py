"""Does a membership attack beat what the model's released (epsilon, delta) allows?

An (epsilon, delta)-DP training run bounds every membership test on one unit by TPR <= e^epsilon FPR + delta.
The check compares the attack's TPR and FPR at each operating point conservatively: a violation is reported only
when even the Clopper-Pearson lower end of the TPR exceeds e^epsilon times the upper end of the FPR, plus delta.
A violation means the claim is wrong (an accounting or training bug) or that members and non-members differ in
distribution (then the audit itself is invalid): either way the stage must stop, loudly.

The claim's unit decides which attacks it bounds: a speaker-level claim bounds speaker and utterance tests (an
utterance is part of one speaker's data); an utterance-level claim bounds a speaker with k utterances only by
group privacy (k epsilon, k e^((k-1) epsilon) delta); a public-only model (epsilon 0) never saw the data.
This is a necessary condition checked on one training run with fixed members, not a proof of privacy.

Many points are checked in one audit (models x attacks x levels x FPRs); ``family`` of them at a familywise
error of ``alpha`` means each check uses Clopper-Pearson intervals at level alpha / family (Bonferroni), so a
correct claim fails the stage with probability at most about alpha, however many models there are.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from espnet_pate.attacks.roc import clopper_pearson

__all__ = ["PrivacyBoundViolation", "bound_checks", "bound_for", "check_bound", "violation_message"]


class PrivacyBoundViolation(RuntimeError):
    """An attack beat the released claim beyond its confidence interval."""


def bound_for(claim: Dict, attack_unit: str, max_utts_per_speaker: int) -> Optional[Dict]:
    """(epsilon, delta) that bounds an attack at ``attack_unit`` under ``claim`` (a privacy.json), or None
    when the claim bounds nothing (no claim, epsilon inf)."""
    eps, delta = claim.get("epsilon"), float(claim.get("delta") or 0.0)
    if eps is None:
        return None
    eps = float(eps)
    if math.isinf(eps):
        return None
    if eps == 0 or claim.get("unit") == "speaker" or attack_unit == claim.get("unit"):
        return {"epsilon": eps, "delta": delta, "by": "the claim"}
    if claim.get("unit") == "utterance" and attack_unit == "speaker":
        k = int(max_utts_per_speaker)
        return {"epsilon": k * eps, "delta": min(1.0, k * math.exp((k - 1) * eps) * delta),
                "by": f"group privacy over {k} utterances"}
    return None


def bound_checks(summary: Dict, bound: Optional[Dict], alpha: float = 0.05, family: int = 1) -> List[Dict]:
    """One row per operating point of ``summary`` (espnet_pate.attacks.roc.summarise), with the TPR's lower
    and the FPR's upper Clopper-Pearson ends at level alpha / family; ok is None when nothing bounds the attack."""
    rows, level = [], alpha / max(1, family)
    for fpr, p in summary["at_fpr"].items():
        tpr_lo = clopper_pearson(p["tp"], summary["members"], level)[0]
        fpr_hi = clopper_pearson(p["fp"], summary["nonmembers"], level)[1]
        row = {"fpr_target": float(fpr), "tpr_lo": tpr_lo, "fpr_hi": fpr_hi, "confidence": 1 - level,
               "allowed": None, "ok": None}
        if bound is not None:
            row["allowed"] = min(1.0, math.exp(bound["epsilon"]) * row["fpr_hi"] + bound["delta"])
            row["ok"] = row["tpr_lo"] <= row["allowed"]
        rows.append(row)
    return rows


def violation_message(rows: List[Dict], bound: Optional[Dict], label: str) -> Optional[str]:
    violated = [r for r in rows if r["ok"] is False]
    if not violated:
        return None
    detail = "; ".join(f"at FPR {r['fpr_target']}: TPR >= {r['tpr_lo']:.4f} (lower end at confidence "
                       f"{r['confidence']:.4g}) but "
                       f"e^eps * FPR_upper + delta = {r['allowed']:.4f}" for r in violated)
    return (f"{label}: the attack beats the released claim (epsilon {bound['epsilon']:.4g}, delta "
            f"{bound['delta']:.3g}, {bound['by']}): {detail}. The claim is wrong or members and non-members differ "
            "in distribution; do not release this model until it is explained.")


def check_bound(summary: Dict, bound: Optional[Dict], label: str = "", alpha: float = 0.05,
                family: int = 1) -> List[Dict]:
    """``bound_checks``, raising PrivacyBoundViolation naming every violated point."""
    rows = bound_checks(summary, bound, alpha, family)
    message = violation_message(rows, bound, label)
    if message:
        raise PrivacyBoundViolation(message)
    return rows

"""Markdown tables of the privacy audits (stage 8) from ``exp/audit/{membership/*.json,inversion/inversion.json}``.

Audit results are statistics of the sensitive data (attacks on it, a speaker classifier trained on it): operator
diagnostics, never released claims. Every table here says so, and the top-level RESULTS.md puts them in a section
of their own, after the released figures.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List, Optional

__all__ = ["audit_md", "AUDIT_HEADING", "replace_audit_section"]

AUDIT_HEADING = "## Privacy audits (operator diagnostics, not released)"
NOTE = ("Attacks on the sensitive data and an evaluation-only speaker classifier trained on it: statistics of the "
        "sensitive data for the experimenter, covered by no privacy claim; never released or used to tune a release.")


def _eps(claim) -> str:
    e = claim.get("epsilon")
    if e is None:
        return "-"
    return ("inf" if math.isinf(float(e)) else f"{float(e):.3g}") + f" ({claim.get('unit', '-')})"


def _ci(v, ci) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _family(rec) -> str:
    b = rec.get("bound_check")
    if not b:
        return "95% per check"
    return f"{100 * (1 - b['familywise_alpha'] / b['family']):.3g}% per check ({b['family']} checks, familywise " \
           f"{100 * (1 - b['familywise_alpha']):.3g}%)"


def _bound(result) -> str:
    checks = result["bound_checks"]
    if all(c["ok"] is None for c in checks):
        return "no bound"
    if all(c["ok"] for c in checks):
        return "within"
    return "**VIOLATED**"


def membership_md(records: List[dict]) -> List[str]:
    lines = ["| system | epsilon (unit) | attack | level | members / non-members | AUC [95% CI] | TPR @ 1% FPR "
             "[95% CI] | TPR @ 0.1% FPR [95% CI] | TPR <= e^eps FPR + delta |", "|" + "---|" * 9]
    unresolved = False
    for rec in records:
        name = Path(rec["system"]).name
        for r in rec["results"]:
            cells = []
            for f in ("0.01", "0.001"):
                p = r["at_fpr"][f]
                mark = "" if p["resolvable"] else " †"
                unresolved |= not p["resolvable"]
                cells.append(_ci(p["tpr"], p["tpr_cp"]) + mark)
            lines.append(f"| {name} | {_eps(rec['claim'])} | {r['attack']} | {r['unit']} | {r['members']} / "
                         f"{r['nonmembers']} | {_ci(r['auc'], r['auc_ci'])} | {cells[0]} | {cells[1]} | {_bound(r)} |")
    rec = records[0]
    lines += ["", f"Members: `{rec['members']}` (the sensitive training set); non-members: `{rec['nonmembers']}` "
              "(held-out speakers of the same distribution that no model trained on or chose checkpoints with). "
              f"LiRA: offline, {len(rec['shadow_models'])} shadow models trained on public data only. AUC intervals: "
              "bootstrap; TPR intervals: Clopper-Pearson (95%). The bound check compares the TPR's lower end with "
              "e^eps times the FPR's upper end plus delta at each operating point, both at the Bonferroni level of "
              f"{_family(rec)} (a necessary condition, not a proof of privacy)."]
    if unresolved:
        lines.append("† fewer non-members than 1/FPR: the threshold lies above every non-member, so the FPR "
                     "reached is 0 of that many, not the nominal one.")
    return lines


def inversion_md(rec: dict) -> List[str]:
    clf = rec["speaker_classifier"]
    lines = ["| system | kind | epsilon (unit) | log-mel correlation | MCD dB | speaker identified | mean rank |",
             "|" + "---|" * 7]
    for name, m in rec["models"].items():
        eps = "-" if m.get("epsilon") is None else _eps({"epsilon": m["epsilon"], "unit": m.get("unit")})
        lines.append(f"| {name} | {m.get('kind', '-')} | {eps} | {m['correlation']:.3f} | {m['mcd_db']:.2f} | "
                     f"{100 * m['speaker_top1']:.0f}% | {m['speaker_mean_rank']:.1f} |")
    inv = rec["inversion"]
    lines += ["", f"{len(rec['targets'])} sensitive training utterances (one per speaker) reconstructed from their "
              f"transcripts and lengths: {inv['steps']} Adam steps (lr {inv['lr']}, L2 {inv['l2_weight']}, TV "
              f"{inv['tv_weight']}, seed {inv['seed']}). Speaker classifier ({clf['note']}): {clf['speakers']} "
              f"speakers, {clf['train_utterances']} utterances, chance {100 * clf['chance']:.0f}%, "
              f"{100 * clf['accuracy_on_originals']:.0f}% on the original target utterances. "
              f"Figure: `{rec['figure']}`."]
    return lines


def audit_md(audit_dir: os.PathLike | str, heading: str = AUDIT_HEADING) -> Optional[str]:
    """The audit section, or None when no audit result exists under ``audit_dir``."""
    audit_dir = Path(audit_dir)
    records = [json.loads(p.read_text()) for p in sorted((audit_dir / "membership").glob("*.json"))]
    inv_path = audit_dir / "inversion" / "inversion.json"
    if not records and not inv_path.exists():
        return None
    lines = [heading, "", NOTE, ""]
    if records:
        lines += ["### Membership inference", "", *membership_md(records), ""]
    if inv_path.exists():
        lines += ["### Model inversion", "", *inversion_md(json.loads(inv_path.read_text())), ""]
    return "\n".join(lines)


def replace_audit_section(results_md: str, section: Optional[str]) -> str:
    """``results_md`` with its audit section (from AUDIT_HEADING to the next level-2 heading or the final
    "Command:" block) replaced by ``section``, or the section inserted before "Command:"."""
    text = results_md
    if AUDIT_HEADING in text:
        start = text.index(AUDIT_HEADING)
        rest = text[start + len(AUDIT_HEADING):]
        ends = [i for i in (rest.find("\n## "), rest.find("\nCommand:\n")) if i >= 0]
        end = start + len(AUDIT_HEADING) + (min(ends) + 1 if ends else len(rest))
        text = text[:start] + text[end:]
    if not section:
        return text
    marker = "\nCommand:\n"
    i = text.rfind(marker)
    if i < 0:
        return text.rstrip("\n") + "\n\n" + section + "\n"
    return text[: i + 1] + section + "\n" + text[i + 1:]

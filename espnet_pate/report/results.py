"""Results tables: `exp/<system>/RESULTS.md` per system and the recipe's top-level `RESULTS.md`.

A system's privacy facts come from `exp/<system>/privacy.json` (`espnet_pate.report.privacy_json`):
epsilon, delta, unit, mechanism, accountant, data_dependent, and for PATE students the pseudo-label WER and
labelled fraction. A system without it is reported as not released (a teacher) with no privacy claim.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional

# privacy.json is written and read in one place; re-exported for the callers that import it from here
from espnet_pate.report.privacy_json import PRIVACY_FILE, read_privacy_info, write_privacy_info  # noqa: F401


def _fmt_eps(eps) -> str:
    if eps is None:
        return "-"
    if isinstance(eps, str):
        return eps
    return "inf" if math.isinf(eps) else f"{eps:.3g}"


def system_results_md(system: str, scores: Mapping[str, Mapping], command: str, decode_config: str) -> str:
    lines = [f"# {system}", "", f"Decoding: ESPnet `Speech2Text` with `{decode_config}`.", "",
             "| set | WER % | sub | del | ins | words | utts |", "|---|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | {s['wer']:.2f} | {s['substitutions']} | {s['deletions']} | {s['insertions']} "
                     f"| {s['ref_words']} | {s['utterances']} |")
    for name, s in scores.items():
        if "keywords" in s:
            k = s["keywords"]
            lines.append(f"\n{name}: {k['hits']} of {k['occurrences']} keyword occurrences recognised "
                         f"({k['recall']:.1f}%).")
    lines += ["", "Command:", "", "```sh", command, "```", ""]
    return "\n".join(lines)


def _accountant(privacy: Dict) -> str:
    """A short name of the accountant for the table (privacy.json holds the full description)."""
    text = str(privacy.get("accountant", "-"))
    for name in ("RDP", "PLD"):
        if text.upper().startswith(name) or (name in text.upper() and "RDP" not in text.upper()):
            return name
    return text.split(";")[0][:24]


def _released(row: Dict) -> bool:
    """A system with a privacy claim; teachers and systems without privacy.json are operator diagnostics."""
    p = row["privacy"]
    return p.get("epsilon") is not None and p.get("mechanism") != "teacher"


def _table(rows: List[Dict], head: List[str], cells_of) -> List[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells_of(r)) + " |" for r in rows]


def summary_md(rows: List[Dict], command: str, ledger_total: Optional[Dict] = None,
               audit: Optional[str] = None) -> str:
    """The recipe's table: one row per released system and budget, its released claim; then the operator
    diagnostics (teachers: statistics of sensitive data, covered by no privacy claim) in a table of their own,
    and the privacy audits' section (``audit``, espnet_pate.report.audit_table.audit_md) when there is one."""
    sets = sorted({s for r in rows for s in r["scores"]}, key=lambda s: (s != "dev", s))
    keyword_sets = [s for s in sets if any("keywords" in r["scores"].get(s, {}) for r in rows)]

    def scores(r):
        return ([f"{r['scores'][s]['wer']:.2f}" if s in r["scores"] else "-" for s in sets]
                + [f"{r['scores'][s]['keywords']['recall']:.1f}" if "keywords" in r["scores"].get(s, {}) else "-"
                   for s in keyword_sets])

    def released(r):
        p = r["privacy"]
        plw, frac = p.get("pseudo_label_wer"), p.get("labelled_fraction")
        return [r["system"], str(p.get("mechanism", "-")), _fmt_eps(p.get("epsilon")), _fmt_eps(p.get("delta")),
                p.get("unit", "-"), _accountant(p), *scores(r), "-" if plw is None else f"{plw:.2f}",
                "-" if frac is None else f"{100 * frac:.0f}%", r.get("vs_dpsgd", "-")]

    score_head = [*[f"WER {s} %" for s in sets], *[f"withheld words {s} %" for s in keyword_sets]]
    head = ["system", "mechanism", "epsilon", "delta", "unit", "accountant", *score_head, "pseudo-label WER %",
            "labelled", "vs DP-SGD (test)"]
    lines = ["# Results", "", "Released systems, each with its own released (epsilon, delta) claim "
             "(data-independent upper bounds).", "",
             *_table([r for r in rows if _released(r)], head, released)]
    if ledger_total is not None:
        lines += ["", f"Everything released from the sensitive data set together (`{ledger_total['ledger']}`, "
                  f"{ledger_total['releases']} releases): epsilon {_fmt_eps(ledger_total['eps'])} at delta "
                  f"{_fmt_eps(ledger_total['delta'])}."]
    if keyword_sets:
        lines += ["", "withheld words: the recall of the words that public_labeled never holds (only the sensitive "
                  "data can teach them), in the references of that set."]
    diagnostics = [r for r in rows if not _released(r)]
    if diagnostics:
        lines += ["", "## Operator diagnostics (not released)", "",
                  "Teachers and other models trained on sensitive data without a mechanism: statistics of the "
                  "sensitive data, for the experimenter only, covered by no privacy claim.", "",
                  *_table(diagnostics, ["system", *score_head], lambda r: [r["system"], *scores(r)])]
    if audit:
        lines += ["", audit.rstrip("\n")]
    return "\n".join([*lines, "", "Command:", "", "```sh", command, "```", ""])


def _budget(row: Dict):
    return row["privacy"].get("target_epsilon", row["privacy"].get("epsilon"))


def relative_to_dpsgd(rows: List[Dict], set_name: str = "test") -> None:
    """Fill `vs_dpsgd`: relative WER change of each private system against DP-SGD at the same budget (the
    target epsilon both were calibrated to; the achieved epsilons are each at most that)."""
    dpsgd = {_budget(r): r["scores"][set_name]["wer"] for r in rows
             if r["privacy"].get("mechanism") == "dpsgd" and set_name in r["scores"]}
    for r in rows:
        base: Optional[float] = dpsgd.get(_budget(r))
        if base and r["privacy"].get("mechanism") not in (None, "dpsgd") and set_name in r["scores"]:
            r["vs_dpsgd"] = f"{100 * (r['scores'][set_name]['wer'] - base) / base:+.1f}%"

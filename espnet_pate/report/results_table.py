"""Stage 7's two files, from the grouped rows of ``results_rows``: ``RESULTS.md`` (released systems and their
claims, the composed cost of everything released, the command) and ``RESULTS_operator_diagnostics.md`` beside it
(teachers, agreement surveys, audits: statistics of the sensitive data, never in the released table).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["DIAGNOSTICS_SUFFIX", "diagnostics_path", "fmt_eps", "operator_md", "results_md", "survey_rows"]

DIAGNOSTICS_SUFFIX = "_operator_diagnostics.md"
RELEASED = ("public_only", "nonprivate", "dpsgd", "pate", "other")


def diagnostics_path(results: Path) -> Path:
    return Path(results).with_name(Path(results).stem + DIAGNOSTICS_SUFFIX)


def fmt_eps(eps) -> str:
    """The one formatting of epsilon and delta in the table (the ledger check compares in it)."""
    if eps is None:
        return "-"
    eps = float(eps)
    return "inf" if math.isinf(eps) else f"{eps:.4g}"


def _ms(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    mean, sd, n = v
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _accountant(privacy: Dict) -> str:
    text = str(privacy.get("accountant", "-"))
    upper = text.upper()
    return "PLD" if upper.startswith("PLD") or ("PLD" in upper and "RDP" not in upper) else \
        "RDP" if "RDP" in upper else text.split(";")[0][:24]


def _table(rows, head, cells) -> List[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(cells(r)) + " |"
                                                                          for r in rows]


def _sets(groups) -> List[str]:
    return sorted({s for g in groups for s, v in g["wer"].items() if v}, key=lambda s: (s != "dev", s))


def _pct(x) -> str:
    return "-" if x is None else f"{x:+.1f}"


def results_md(groups: List[Dict], parts: Sequence[str], command: str, ledger_total: Optional[Dict] = None) -> str:
    released = [g for g in groups if g["kind"] in RELEASED]
    sets = _sets(released)
    kw_sets = [s for s in sets if any(g["withheld"].get(s) for g in released)]

    def cells(g):
        p = g["privacy"]
        vs = [c for part in parts for c in (_pct(g.get("vs", {}).get(part, (None, None))[0]),
                                            _pct(g.get("vs", {}).get(part, (None, None))[1]))]
        return [g["system"], g["method"], g["source"], fmt_eps(p.get("epsilon")), fmt_eps(p.get("delta")),
                str(p.get("unit", "-")), _accountant(p), str(g["runs"]), *[_ms(g["wer"].get(s)) for s in sets],
                *[_ms(g["withheld"].get(s), 1) for s in kw_sets], _ms(g["labels"], 0),
                _ms(g["pseudo_label_wer"]), *vs]

    head = ["system", "method", "public audio", "epsilon", "delta", "unit", "accountant", "runs",
            *[f"WER {s} %" for s in sets], *[f"withheld words {s} %" for s in kw_sets], "labels",
            "pseudo-label WER %",
            *[c for part in parts for c in (f"vs {part}: rel. WER %", f"vs {part}: gap closed %")]]
    lines = ["# Results", "", "Released systems, each with its own released (epsilon, delta) claim (data-independent "
             "upper bounds); repeats (`<system>_seed<N>`) as mean ± sample standard deviation over `runs`.", "",
             *_table(released, head, cells), ""]
    if parts:
        lines += ["vs DP-SGD: against DP-SGD of that part (full model, or the teachers' part over the frozen public "
                  "encoder) at the same target epsilon, on mean test WER: rel. = (WER_dpsgd - WER) / WER_dpsgd, as "
                  "the published study defines it (positive: lower WER); gap closed = (WER_dpsgd - WER) / "
                  "(WER_dpsgd - WER_nonprivate).", ""]
    if kw_sets:
        lines += ["withheld words: recall of the words that public_labeled never holds (only the sensitive data can "
                  "teach them).", ""]
    if any(g["kind"] == "pate" for g in released):
        lines += ["public audio: the untranscribed public set a student's labels transcribe (public_unlabeled: "
                  "similar source; public_unlabeled_diff: a different source); labels: utterances its release "
                  "labelled.", ""]
    if ledger_total is not None:
        lines += [f"Everything released from the sensitive data set together ({ledger_total['releases']} releases in "
                  f"the ledger): epsilon {fmt_eps(ledger_total['eps'])} at delta {fmt_eps(ledger_total['delta'])}.",
                  ""]
    lines += ["Plots: `RESULTS_wer_vs_epsilon.png`, `RESULTS_labels_vs_epsilon.png`. Operator diagnostics (teachers, "
              "agreement, audits) are in their own file, covered by no claim.", ""]
    return "\n".join([*lines, "Command:", "", "```sh", command, "```", ""])


def survey_rows(exp_root: Path) -> List[List[str]]:
    """The real teachers' agreement surveys (stage 4, ``*/operator_diagnostics/agreement_survey.json``)."""
    rows = []
    for path in sorted(Path(exp_root).glob("*/operator_diagnostics/agreement_survey.json")):
        s = json.loads(path.read_text())
        k, top = s.get("num_teachers"), s.get("plurality", {}).get("top_counts") or []
        share = f"{100 * sum(top) / (len(top) * k):.1f}" if top and k else "-"
        wh = s.get("withheld_agreement", {})
        frac = [wh.get(key, {}).get("fraction_agreeing") for key in ("with withheld words", "without")]
        rows.append([str(path.relative_to(exp_root)), str(k), str(s.get("utterances", "-")), share,
                     *["-" if f is None else f"{100 * f:.1f}" for f in frac]])
    return rows


def operator_md(groups: List[Dict], surveys: List[List[str]], audit: Optional[str], command: str) -> str:
    diag = [g for g in groups if g["kind"] not in RELEASED]
    sets = _sets(diag)
    kw_sets = [s for s in sets if any(g["withheld"].get(s) for g in diag)]
    lines = ["# Operator diagnostics (not released)", "",
             "Statistics of the sensitive data (teachers trained on it without a mechanism, their agreement, "
             "attacks on it), for the experimenter only: covered by no privacy claim, never used to tune a release.",
             "", "## Teachers", ""]
    lines += _table(diag, ["system", *[f"WER {s} %" for s in sets], *[f"withheld words {s} %" for s in kw_sets]],
                    lambda g: [g["system"], *[_ms(g["wer"].get(s)) for s in sets],
                               *[_ms(g["withheld"].get(s), 1) for s in kw_sets]]) if diag else ["(none decoded)"]
    if surveys:
        lines += ["", "## Agreement of the real teachers", "",
                  *_table(surveys, ["survey", "teachers", "utterances", "plurality: mean share on the top transcript %",
                                    "agreeing, with withheld words %", "agreeing, without %"], lambda r: r)]
    if audit:
        lines += ["", audit.rstrip("\n")]
    return "\n".join([*lines, "", "Command:", "", "```sh", command, "```", ""])

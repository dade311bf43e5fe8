"""Stage 4, report: a release's privacy report (JSON and Markdown) and the student's privacy.json.

Three kinds of figures, never mixed:

* the released claim: the data-independent (epsilon, delta) of what was asked, with mechanism, accountant, unit;
* figures that are NOT released: data-dependent bounds (they depend on the sensitive votes);
* operator diagnostics: the teachers' agreement (a statistic of sensitive data, for the experimenter only, covered
  by no privacy claim, never to size a setting).
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

OPERATOR_NOTE = ("operator diagnostics: statistics of the sensitive teachers, for the experimenter only; covered by "
                 "no privacy claim; never publish them or size a setting from them")


def agreement_histogram(votes: np.ndarray, num_teachers: int, hard: bool) -> dict:
    """How many teachers voted for each query's plurality class (hard votes), or the plurality's share of the
    summed posteriors in K bins (soft votes)."""
    if votes.size == 0:
        return {"teachers_agreeing": list(range(1, num_teachers + 1)), "queries": [0] * num_teachers}
    top = votes.max(axis=1)
    if hard:
        counts = np.bincount(np.rint(top).astype(int), minlength=num_teachers + 1)[1:num_teachers + 1]
        return {"teachers_agreeing": list(range(1, num_teachers + 1)), "queries": counts.tolist(),
                "fraction": (counts / max(counts.sum(), 1)).round(4).tolist()}
    edges = np.linspace(0, num_teachers, num_teachers + 1)
    counts, _ = np.histogram(top, bins=edges)
    return {"plurality_mass_bins": edges.tolist(), "queries": counts.tolist(),
            "fraction": (counts / max(counts.sum(), 1)).round(4).tolist()}


def agreement_of_counts(top_counts: np.ndarray, num_teachers: int) -> dict:
    """The same histogram from each query's top count (the plurality of transcripts)."""
    votes = np.asarray(top_counts, dtype=float).reshape(-1, 1)
    return agreement_histogram(votes if votes.size else np.zeros((0, 1)), num_teachers, True)


def _agreement_table(ag: dict) -> list:
    if "teachers_agreeing" in ag:
        lines = ["| teachers agreeing with the plurality | queries | fraction |", "|---|---|---|"]
        for a, c, f in zip(ag["teachers_agreeing"], ag["queries"], ag.get("fraction", [0] * len(ag["queries"]))):
            if c:
                lines.append(f"| {a} | {c} | {f:.3f} |")
        return lines
    lines = ["| plurality mass bin | queries |", "|---|---|"]
    edges = ag["plurality_mass_bins"]
    return lines + [f"| {edges[i]:g}-{edges[i + 1]:g} | {c} |" for i, c in enumerate(ag["queries"]) if c]


def report_markdown(r: dict) -> str:
    claim, u = r["claim"], r["utterances"]
    lines = [
        f"# PATE pseudo-labels: {r['name']}", "",
        f"- mechanism: {r['mechanism']} {json.dumps(r['params'])}, level: {r['level']}, teachers: {r['num_teachers']}",
        f"- **released claim: ({claim['epsilon']:.4g}, {claim['delta']:g})-DP**, privacy unit {claim['unit']}, "
        f"data-independent; accountant: {claim['accountant']}",
        f"- target epsilon {r['target_eps']:g}; stop: {r['stop']}",
        f"- queries asked: {r['queries']} ({r['answered_queries']} answered)",
        f"- utterances: {u['total']} in the public set; {u['written']} labelled in `text` "
        f"({100 * r['labelled_fraction']:.1f}%); outcomes: {json.dumps(u['outcomes'])}",
        "- pseudo-label WER: " + ("-" if r["pseudo_label_wer"] is None else f"{r['pseudo_label_wer']:.2f}%")
        + " (labelled utterances against the public set's withheld transcripts)",
        "- noise seed: " + ("from the operating system" if not r["seed_fixed"]
                            else f"FIXED ({r['seed']}): reproducible experiment, NOT FOR RELEASE"),
        f"- release id {r['release_id']} in `{r['ledger']['path']}` (everything released from this sensitive set "
        f"together: eps {r['ledger']['spent_eps']:.4g} of {r['ledger']['eps_budget']:g} at delta "
        f"{r['ledger']['delta']:g})", "",
    ]
    nr = r.get("not_released")
    if nr:
        lines += ["## Not released (data-dependent: depends on the sensitive votes)", "",
                  f"- data-dependent epsilon of the same queries: {nr['epsilon_data_dependent']:.4g} (improved "
                  f"conversion), {nr['epsilon_data_dependent_classic']:.4g} (classic)", ""]
    lines += [f"## Teachers' agreement ({OPERATOR_NOTE})", ""] + _agreement_table(r["operator_diagnostics"][
        "agreement_histogram"])
    lines += ["", "Command:", "", "```sh", r.get("command", ""), "```", ""]
    return "\n".join(lines)


def write_student_privacy_info(out, report: dict, student_dir: Optional[str] = None) -> None:
    """privacy.json of a release (and of the student trained on it: it sees sensitive data only through these
    labels, so it inherits their claim). target_epsilon: results rows meet DP-SGD's on it."""
    from espnet_pate.report.privacy_json import write_privacy_info

    claim = report["claim"]
    write_privacy_info(student_dir or out, epsilon=claim["epsilon"], target_epsilon=report["target_eps"],
                       delta=claim["delta"], unit=claim["unit"],
                       mechanism=f"PATE {report['mechanism']} ({report['level']} level, "
                                 f"{report['num_teachers']} teachers)",
                       accountant=claim["accountant"], data_dependent=False,
                       pseudo_label_wer=report["pseudo_label_wer"], labelled_fraction=report["labelled_fraction"],
                       not_for_release=report["not_for_release"], release_id=report["release_id"],
                       **({"public_data": report["public_data"]} if report.get("public_data") else {}))

"""Each system's own `exp/<system>/RESULTS.md`. The recipe's top-level RESULTS.md is written from all of them by
espnet_pate.report.results_writer."""
from __future__ import annotations

from typing import Mapping


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


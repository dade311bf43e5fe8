"""Do the teachers agree where it matters? Agreement on public utterances with and without withheld words.

PATE can carry to a student only what the teachers agree on. The words that only sensitive data teaches (the
corpus's withheld words) are the point of the study, so the teachers' agreement is reported separately for
public utterances whose true transcript holds one. The true transcripts of public_unlabeled are evaluation data:
they only split and score here, never choose what is queried.

With the real teachers the result describes sensitive data: an operator diagnostic, never released and never
used to size a setting (PRIVACY.md). With shadow teachers it is public, like the agreement survey.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

from espnet_pate.privacy.plurality import normalise_transcript

AGREE_SHARE = 0.75  # the yardstick: at least 75% of the teachers on one transcript


def split_by_withheld(text: Mapping[str, str], withheld_words: Iterable[str], per_group: int,
                      durations: Mapping[str, float] | None = None) -> Dict[str, List[str]]:
    """Up to ``per_group`` utterance ids with a withheld word and as many without: the shortest first when
    ``durations`` are given (what stage 4's ``select: shortest`` queries), else in id order."""
    withheld = set(withheld_words)
    ids = sorted(text, key=lambda u: u.encode("utf-8"))
    if durations is not None:
        ids = sorted(ids, key=lambda u: durations[u])
    groups: Dict[str, List[str]] = {"with withheld words": [], "without": []}
    for u in ids:
        group = "with withheld words" if set(text[u].split()) & withheld else "without"
        if len(groups[group]) < per_group:
            groups[group].append(u)
    return groups


def summarise(transcripts: Sequence[Sequence[str]], refs: Sequence[str], withheld_words: Iterable[str],
              num_teachers: int) -> dict:
    """Per utterance the teachers' own transcripts; how often >= 75% agree, and what they agree on."""
    withheld = set(withheld_words)
    tops, agreed, right, carrying, carried_right = [], 0, 0, 0, 0
    for texts, ref in zip(transcripts, refs):
        counts = Counter(s for s in (normalise_transcript(t) for t in texts) if s)
        string, top = counts.most_common(1)[0] if counts else ("", 0)
        tops.append(top)
        if top >= AGREE_SHARE * num_teachers:
            agreed += 1
            right += string == ref
            if set(string.split()) & withheld:
                carrying += 1
                carried_right += string == ref
    n = len(tops)
    return {
        "utterances": n,
        "agree_share": AGREE_SHARE,
        "fraction_agreeing": agreed / n if n else 0.0,
        "agreeing": agreed,
        "agreeing_and_exactly_right": right,
        "agreeing_on_a_withheld_word": carrying,
        "agreeing_on_a_withheld_word_and_right": carried_right,
        "median_top_count": float(np.median(tops)) if tops else 0.0,
        "top_counts": tops,
    }


def withheld_agreement(ctx, text: Mapping[str, str], withheld_words: Iterable[str], per_group: int = 120,
                       shortest: bool = True) -> dict:
    """The teachers of ``ctx`` (a stage-4 context) on up to ``per_group`` utterances of each kind."""
    withheld = set(withheld_words)
    groups = split_by_withheld({u: t for u, t in text.items() if u in ctx.wav_scp}, withheld, per_group,
                               ctx.durations() if shortest else None)
    out = {"num_teachers": ctx.ens.num_teachers, "select": "shortest" if shortest else "first"}
    for name, utts in groups.items():
        pairs = [(u, texts) for u, texts in ctx.own_transcripts(utts) if texts is not None]
        out[name] = summarise([t for _, t in pairs], [text[u] for u, _ in pairs], withheld, ctx.ens.num_teachers)
    return out

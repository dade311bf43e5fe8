"""Word error rate with jiwer, over Kaldi-style {utt: text} maps."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

import jiwer


@dataclass(frozen=True)
class WerResult:
    wer: float  # percent
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    utterances: int
    missing: int  # reference utterances without a hypothesis (scored as all deletions)

    def as_dict(self):
        return self.__dict__.copy()


def score_wer(ref: Mapping[str, str], hyp: Mapping[str, str]) -> WerResult:
    """WER of `hyp` against `ref`; utterances missing from `hyp` count as empty hypotheses."""
    if not ref:
        raise ValueError("no reference utterances to score")
    utts = sorted(ref)
    refs = [ref[u] for u in utts]
    hyps = [hyp.get(u, "") for u in utts]
    if not all(r.strip() for r in refs):
        raise ValueError("empty reference transcript: WER is undefined for it")
    out = jiwer.process_words(refs, hyps)
    ref_words = out.substitutions + out.deletions + out.hits
    return WerResult(
        wer=100.0 * (out.substitutions + out.deletions + out.insertions) / ref_words,
        substitutions=out.substitutions, deletions=out.deletions, insertions=out.insertions,
        ref_words=ref_words, utterances=len(utts), missing=sum(u not in hyp for u in utts),
    )


@dataclass(frozen=True)
class KeywordRecall:
    recall: float  # percent of keyword occurrences in the references that the hypotheses contain
    hits: int
    occurrences: int

    def as_dict(self):
        return self.__dict__.copy()


def keyword_recall(ref: Mapping[str, str], hyp: Mapping[str, str], keywords: Iterable[str]) -> KeywordRecall:
    """How many occurrences of `keywords` in each reference its hypothesis also contains (bag of words, per
    utterance). With the corpus's withheld words, this is what only the sensitive data can teach."""
    keywords = set(keywords)
    hits = occurrences = 0
    for utt, text in ref.items():
        wanted = Counter(w for w in text.split() if w in keywords)
        got = Counter(hyp.get(utt, "").split())
        occurrences += sum(wanted.values())
        hits += sum(min(n, got[w]) for w, n in wanted.items())
    return KeywordRecall(recall=100.0 * hits / occurrences if occurrences else float("nan"), hits=hits,
                         occurrences=occurrences)

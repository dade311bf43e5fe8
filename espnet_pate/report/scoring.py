"""Word error rate with jiwer, over Kaldi-style {utt: text} maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

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

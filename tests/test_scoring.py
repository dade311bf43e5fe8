"""WER scoring and the recall of the withheld words."""
import math

import pytest

from espnet_pate.report.scoring import keyword_recall, score_wer


def test_wer_counts_errors_and_missing_hypotheses():
    ref = {"a": "set an alarm for seven", "b": "call grace", "c": "play music"}
    hyp = {"a": "set alarm for seven thirty", "b": "call grace"}
    r = score_wer(ref, hyp)
    # a: one deletion (an), one insertion (thirty); c: missing, two deletions.
    assert (r.substitutions, r.deletions, r.insertions, r.ref_words, r.missing) == (0, 3, 1, 9, 1)
    assert r.wer == pytest.approx(100 * 4 / 9)


def test_wer_refuses_empty_references():
    with pytest.raises(ValueError):
        score_wer({}, {})
    with pytest.raises(ValueError, match="empty reference"):
        score_wer({"a": " "}, {"a": "x"})


def test_keyword_recall_counts_each_occurrence_once():
    ref = {"a": "navigate to the airport via the bakery", "b": "call aisha and aisha", "c": "play music"}
    hyp = {"a": "navigate to the airport", "b": "call aisha"}
    r = keyword_recall(ref, hyp, ["airport", "bakery", "aisha", "navigate"])
    # a: navigate, airport hit, bakery missed; b: aisha twice in the reference, once in the hypothesis.
    assert (r.hits, r.occurrences) == (3, 5) and r.recall == pytest.approx(60.0)
    assert math.isnan(keyword_recall({"c": "play music"}, {}, ["airport"]).recall)

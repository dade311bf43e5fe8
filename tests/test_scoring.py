"""WER scoring and the results table."""
import math

import pytest

from espnet_pate.report.results import relative_to_dpsgd, summary_md
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


def test_summary_table_rows_and_relative_change():
    rows = [
        {"system": "dpsgd_eps8", "scores": {"test": {"wer": 40.0}}, "privacy": {"epsilon": 7.9991, "target_epsilon": 8.0, "mechanism": "dpsgd"}},
        {"system": "student_gnmax_eps8", "scores": {"test": {"wer": 30.0}},
         "privacy": {"epsilon": 7.5, "target_epsilon": 8.0, "delta": 1e-5, "unit": "speaker", "mechanism": "gnmax",
                     "pseudo_label_wer": 12.5, "labelled_fraction": 0.8}},
        {"system": "nonprivate", "scores": {"test": {"wer": 10.0}}, "privacy": {"epsilon": math.inf}},
    ]
    rows[1]["privacy"]["accountant"] = "RDP on order grid ref2018-297, improved conversion"
    rows.append({"system": "teachers_head_k40/teacher_0", "scores": {"test": {"wer": 20.0}},
                 "privacy": {"mechanism": "teacher"}})
    relative_to_dpsgd(rows)
    table = summary_md(rows, "cmd", {"ledger": "exp/privacy_ledger.jsonl", "releases": 2, "eps": 11.5,
                                     "delta": 1e-5})
    assert "| student_gnmax_eps8 | gnmax | 7.5 | 1e-05 | speaker | RDP | 30.00 | 12.50 | 80% | -25.0% |" in table
    assert "| nonprivate | - | inf | - | - | - | 10.00 | - | - | - |" in table
    assert "epsilon 11.5 at delta 1e-05" in table
    released, diagnostics = table.split("## Operator diagnostics")
    assert "teacher_0" not in released and "| teachers_head_k40/teacher_0 | 20.00 |" in diagnostics


def test_keyword_recall_counts_each_occurrence_once():
    ref = {"a": "navigate to the airport via the bakery", "b": "call aisha and aisha", "c": "play music"}
    hyp = {"a": "navigate to the airport", "b": "call aisha"}
    r = keyword_recall(ref, hyp, ["airport", "bakery", "aisha", "navigate"])
    # a: navigate, airport hit, bakery missed; b: aisha twice in the reference, once in the hypothesis.
    assert (r.hits, r.occurrences) == (3, 5) and r.recall == pytest.approx(60.0)
    assert math.isnan(keyword_recall({"c": "play music"}, {}, ["airport"]).recall)


def test_summary_table_shows_withheld_word_recall_where_scored():
    kw = {"recall": 25.0, "hits": 1, "occurrences": 4}
    rows = [{"system": "teacher", "scores": {"test": {"wer": 20.0, "keywords": kw}}, "privacy": {}},
            {"system": "old", "scores": {"test": {"wer": 30.0}}, "privacy": {}}]
    table = summary_md(rows, "cmd")
    assert "withheld words test %" in table
    assert "| teacher | 20.00 | 25.0 |" in table and "| old | 30.00 | - |" in table  # no claim: diagnostics

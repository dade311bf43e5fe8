"""Agreement where it matters: the split by withheld words and what the teachers agree on."""
import json

import pytest

from espnet_pate.ensemble.withheld_agreement import split_by_withheld, summarise


def test_split_takes_the_shortest_of_each_kind():
    text = {"a": "call fatima", "b": "call anna", "c": "weather in lagos today", "d": "play jazz", "e": "call anna now"}
    durations = {"a": 3.0, "b": 1.0, "c": 0.5, "d": 2.0, "e": 4.0}
    groups = split_by_withheld(text, {"fatima", "lagos"}, per_group=2, durations=durations)
    assert groups == {"with withheld words": ["c", "a"], "without": ["b", "d"]}
    assert split_by_withheld(text, {"fatima"}, per_group=1) == {"with withheld words": ["a"], "without": ["b"]}


def test_summary_counts_agreement_rightness_and_the_withheld_word():
    refs = ["call fatima", "call fatima", "play jazz"]
    transcripts = [
        ["call fatima", "call fatima", "call fatima", "call fatma"],   # 3 of 4 agree, right, carries it
        ["call fatma", "call fatma", "call fatma", "call fatima"],     # 3 of 4 agree on a misspelling
        ["play jazz", "play jass", "play chess", ""],                  # no agreement
    ]
    s = summarise(transcripts, refs, {"fatima"}, num_teachers=4)
    assert s["agreeing"] == 2 and s["agreeing_and_exactly_right"] == 1
    assert s["agreeing_on_a_withheld_word"] == 1 == s["agreeing_on_a_withheld_word_and_right"]
    assert s["top_counts"] == [3, 3, 1] and s["fraction_agreeing"] == pytest.approx(2 / 3)


def test_survey_cli_splits_by_withheld_words(tmp_path):
    pytest.importorskip("espnet2")
    from espnet_pate.bin import pate_label
    from espnet_pate.data.kaldi_dir import read_table
    from espnet_pate.ensemble.toy import write_toy_setup

    toy = write_toy_setup(tmp_path / "toy", num_teachers=3, num_utts=6)
    text = read_table(toy["data"] / "text")
    word = sorted(text.values())[0].split()[0]
    (tmp_path / "withheld.txt").write_text(word + "\n")
    out = tmp_path / "pate"
    argv = ["--teachers", str(toy["teachers"]), "--data", str(toy["data"]), "--out", str(out), "--unit", "speaker",
            "--public-model", str(toy["public"]),
            "--survey", "2", "--withheld-words", str(tmp_path / "withheld.txt"), "--withheld-utts", "3"]
    assert pate_label.main(argv) == 0
    survey = json.loads((out / "operator_diagnostics" / "agreement_survey.json").read_text())["withheld_agreement"]
    with_word = sum(word in t.split() for t in text.values())
    assert survey["with withheld words"]["utterances"] == min(3, with_word)
    assert survey["without"]["utterances"] == min(3, len(text) - with_word)
    assert all(0 <= c <= 3 for g in ("with withheld words", "without") for c in survey[g]["top_counts"])

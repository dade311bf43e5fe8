"""espnet_pate.bin.exclude_words_data_dir: the public model's held-out set holds no withheld word."""
import pytest

from espnet_pate.bin.exclude_words_data_dir import exclude_words_data_dir, utts_without_words
from espnet_pate.data.kaldi_dir import KaldiDirError, read_kaldi_dir


def make_dir(path, texts):
    path.mkdir()
    ids = sorted(texts)
    (path / "wav.scp").write_text("".join(f"{u} /audio/{u}.wav\n" for u in ids))
    (path / "text").write_text("".join(f"{u} {texts[u]}\n" for u in ids))
    (path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in ids))


def test_whole_words_only():
    text = {"a": "call paris now", "b": "call parisa now", "c": "play music"}
    assert utts_without_words(text, ["paris"]) == ["b", "c"]


def test_copy_keeps_tables_consistent(tmp_path):
    make_dir(tmp_path / "dev", {"s1-u1": "drive to oslo", "s1-u2": "set an alarm", "s2-u1": "call anna",
                                "s2-u2": "what is the weather"})
    (tmp_path / "withheld.txt").write_text("anna\noslo\ndrive\n")
    assert exclude_words_data_dir(tmp_path / "dev", tmp_path / "withheld.txt", tmp_path / "dev_public") == 2
    sub = read_kaldi_dir(tmp_path / "dev_public")
    assert sorted(sub.text) == sorted(sub.wav_scp) == sorted(sub.utt2spk) == ["s1-u2", "s2-u2"]
    assert (tmp_path / "dev_public" / "spk2utt").read_text() == "s1 s1-u2\ns2 s2-u2\n"


def test_refuses_an_empty_result(tmp_path):
    make_dir(tmp_path / "dev", {"s1-u1": "call anna"})
    (tmp_path / "withheld.txt").write_text("anna\n")
    with pytest.raises(KaldiDirError, match="every utterance"):
        exclude_words_data_dir(tmp_path / "dev", tmp_path / "withheld.txt", tmp_path / "out")

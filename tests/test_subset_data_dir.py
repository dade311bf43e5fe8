"""espnet_pate.bin.subset_data_dir: N evenly spaced utterances, every table kept consistent."""
import pytest

from espnet_pate.bin.subset_data_dir import evenly_spaced, subset_data_dir
from espnet_pate.data.kaldi_dir import read_kaldi_dir


def make_dir(path, n):
    path.mkdir()
    ids = [f"spk{i % 3}-utt{i:03d}" for i in range(n)]
    (path / "wav.scp").write_text("".join(f"{u} /audio/{u}.wav\n" for u in sorted(ids)))
    (path / "text").write_text("".join(f"{u} words of {u}\n" for u in sorted(ids)))
    (path / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(ids)))
    return ids


def test_evenly_spaced_spans_the_sorted_ids():
    ids = [f"u{i:02d}" for i in range(10)]
    assert evenly_spaced(reversed(ids), 5) == ["u00", "u02", "u04", "u06", "u08"]
    assert evenly_spaced(ids, 20) == ids


def test_subset_keeps_tables_consistent(tmp_path):
    make_dir(tmp_path / "dev", 40)
    assert subset_data_dir(tmp_path / "dev", 10, tmp_path / "dev_10") == 10
    sub = read_kaldi_dir(tmp_path / "dev_10")
    assert len(sub.wav_scp) == 10 and set(sub.text) == set(sub.wav_scp) == set(sub.utt2spk)
    assert len({sub.utt2spk[u] for u in sub.utt2spk}) == 3  # spread over the set, not its first speaker
    spk2utt = (tmp_path / "dev_10" / "spk2utt").read_text().split("\n")
    assert sum(len(line.split()) - 1 for line in spk2utt if line) == 10


def test_subset_rejects_zero(tmp_path):
    make_dir(tmp_path / "dev", 4)
    with pytest.raises(ValueError, match="positive"):
        subset_data_dir(tmp_path / "dev", 0, tmp_path / "out")


def test_speakers_keep_every_utterance_of_the_chosen_speakers(tmp_path):
    ids = make_dir(tmp_path / "sensitive", 30)
    assert subset_data_dir(tmp_path / "sensitive", 2, tmp_path / "spk2", speakers=True) == 20
    sub = read_kaldi_dir(tmp_path / "spk2")
    chosen = set(sub.utt2spk.values())
    assert chosen == {"spk0", "spk1"} and set(sub.wav_scp) == {u for u in ids if u.split("-")[0] in chosen}
    with pytest.raises(ValueError, match="speakers must be positive"):
        subset_data_dir(tmp_path / "sensitive", 0, tmp_path / "out", speakers=True)

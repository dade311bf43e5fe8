"""FSDD connected-digit preparation (espnet_pate/data/fsdd.py) on a handful of generated FSDD-named recordings."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from espnet_pate.data.fsdd import WORDS, list_recordings, load_config, plan_corpus, prepare_fsdd
from espnet_pate.data.kaldi_dir import read_kaldi_dir, read_table
from espnet_pate.data.synth_audio import write_wav
from espnet_pate.data.validate import validate_data_dir

SPEAKERS = ("ann", "bob", "cat")
SETS = ("public_labeled", "sensitive", "public_unlabeled", "public_unlabeled_diff", "dev", "test")
CONFIG = {
    "seed": 7, "held_out_speakers": ["cat"], "digits_per_utt": [2, 3], "gap_seconds": [0.05, 0.1],
    "withheld_words": ["seven"], "diff_snr_db": [15, 20],
    "sets": {"public_labeled": {"utterances": 3}, "sensitive": {"utterances": 3},
             "public_unlabeled": {"utterances": 2}, "public_unlabeled_diff": {"utterances": 1},
             "dev": {"utterances": 2}, "test": {"utterances": 2}},
}
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="public_unlabeled_diff's channel needs sox")


def make_fsdd(root: Path) -> Path:
    """10 digits x 2 takes per speaker, 8 kHz 16-bit: a tone per digit, a length per take."""
    rec = root / "recordings"
    rec.mkdir(parents=True)
    for spk in SPEAKERS:
        for digit in range(10):
            for take in range(2):
                n = 800 + 160 * take + 40 * digit
                tone = 8000 * np.sin(2 * np.pi * (200 + 50 * digit) * np.arange(n) / 8000)
                write_wav(rec / f"{digit}_{spk}_{take}.wav", tone, 8000)
    return root


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdd")
    fsdd = make_fsdd(tmp / "fsdd")
    config = load_config(write_config(tmp / "corpus.yaml"))
    plans = prepare_fsdd(fsdd, config, tmp / "data", log=lambda _: None)
    return tmp, fsdd, config, plans


def test_six_valid_directories_at_16khz(built):
    tmp, _, _, _ = built
    for name in SETS:
        stats = validate_data_dir(tmp / "data" / name, sample_rate=16000)
        assert stats.num_utts == CONFIG["sets"][name]["utterances"]
        for path in read_kaldi_dir(tmp / "data" / name).wav_scp.values():
            assert soundfile.info(path).samplerate == 16000 and soundfile.info(path).channels == 1


def test_transcripts_are_the_digits_of_the_source_files_in_order(built):
    tmp, _, _, _ = built
    for name in SETS:
        d = read_kaldi_dir(tmp / "data" / name)
        sources = read_table(tmp / "data" / name / "utt2source")
        for utt, text in d.text.items():
            files = sources[utt].split()
            assert text.split() == [WORDS[int(f.split("_")[0])] for f in files]
            assert 2 <= len(files) <= 3
            assert {f.split("_")[1] for f in files} == {d.utt2spk[utt]}  # one speaker per utterance
            assert utt.startswith(d.utt2spk[utt] + "-")  # Kaldi: utterance ids sort under their speaker


def test_held_out_speakers_only_in_dev_and_test_and_no_recording_twice(built):
    tmp, _, _, _ = built
    used = []
    for name in SETS:
        spks = set(read_kaldi_dir(tmp / "data" / name).utt2spk.values())
        assert spks and spks <= ({"cat"} if name in ("dev", "test") else {"ann", "bob"}), name
        used += [f for v in read_table(tmp / "data" / name / "utt2source").values() for f in v.split()]
    assert len(used) == len(set(used))


def test_withheld_word_never_in_public_labeled(built):
    tmp, _, _, plans = built
    assert (tmp / "data" / "withheld_words.txt").read_text() == "seven\n"
    assert all(r.digit != 7 for u in plans["public_labeled"] for r in u.recordings)
    assert not any("seven" in t.split() for t in read_kaldi_dir(tmp / "data" / "public_labeled").text.values())


def test_audio_is_the_recordings_with_their_gaps_at_twice_the_rate(built):
    tmp, _, _, plans = built
    utt = plans["sensitive"][0]
    samples = sum(soundfile.info(r.path).frames for r in utt.recordings) + sum(round(g * 8000) for g in utt.gaps)
    assert soundfile.info(str(tmp / "data" / "wav" / "sensitive" / f"{utt.utt_id}.wav")).frames == 2 * samples


@needs_sox
def test_same_seed_same_bytes_other_seed_other_corpus(built, tmp_path):
    tmp, fsdd, config, _ = built
    prepare_fsdd(fsdd, config, tmp_path / "again", log=lambda _: None)
    for name in SETS:
        for f in ("wav.scp", "text", "utt2spk", "utt2source"):
            a, b = (tmp / "data" / name / f).read_text(), (tmp_path / "again" / name / f).read_text()
            assert a.replace(str(tmp / "data"), "") == b.replace(str(tmp_path / "again"), "")
        for wav in sorted((tmp / "data" / "wav" / name).glob("*.wav")):
            assert wav.read_bytes() == (tmp_path / "again" / "wav" / name / wav.name).read_bytes()
    other = plan_corpus(list_recordings(fsdd), load_config(write_config(tmp_path / "c.yaml", seed=8)))
    assert [u.text for u in other["sensitive"]] != [u.text for u in built[3]["sensitive"]]


def test_rerun_skips_finished_sets(built):
    tmp, fsdd, config, _ = built
    messages = []
    prepare_fsdd(fsdd, config, tmp / "data", log=messages.append)
    assert len(messages) == len(SETS) and all("skipped" in m for m in messages)


def test_errors_name_the_file_or_the_set(tmp_path):
    fsdd = make_fsdd(tmp_path / "fsdd")
    (fsdd / "recordings" / "seven_ann_0.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="seven_ann_0.wav: not an FSDD file name"):
        list_recordings(fsdd)
    (fsdd / "recordings" / "seven_ann_0.wav").unlink()
    sets = {**CONFIG["sets"], "sensitive": {"utterances": 40}}
    with pytest.raises(ValueError, match="lower sets.sensitive.utterances"):
        plan_corpus(list_recordings(fsdd), load_config(write_config(tmp_path / "c.yaml", sets=sets)))
    with pytest.raises(ValueError, match=r"held_out_speakers \['dan'\] have no recordings"):
        plan_corpus(list_recordings(fsdd), load_config(write_config(tmp_path / "c.yaml", held_out_speakers=["dan"])))
    with pytest.raises(ValueError, match="withheld_words"):
        load_config(write_config(tmp_path / "c.yaml", withheld_words=["eleven"]))

"""egs2/librispeech_100/pate1 on a tiny directory in LibriSpeech's own layout (FLAC + .trans.txt).

The fast tests read silent FLACs; the slow one speaks the transcripts with the repo's espeak-ng speakers and runs
the recipe's stages 1-3 (data preparation, validation and statistics, public pretraining and two teachers) with
the shared debug configs, ngpu 0, plus one training epoch of the GPU-sized model on the CPU.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import soundfile
import yaml

from espnet_pate.data.kaldi_dir import read_kaldi_dir
from espnet_pate.data.librispeech import LibriConfig, load_config, plan_corpus, read_split, split_speakers

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "librispeech_100" / "pate1"
SPLITS = {  # speaker ids of the real corpus; the split by hash (seed 2026) gives every training set a speaker
    "train-clean-100": ["103", "1034", "1040", "1069", "1081", "1088"],
    "dev-clean": ["84", "174"], "test-clean": ["61", "121"], "train-other-500": ["20", "25"],
}
SENTENCES = ["THE CAT SAT ON THE MAT", "I DON'T THINK SO SAID HE", "SHE WALKED HOME IN THE RAIN",
             "A LITTLE BIRD SANG ALL DAY", "WE HAVE TWO DOGS AND A CAT", "THE SUN IS WARM TODAY"]
SETS = ("public_labeled", "sensitive", "public_unlabeled", "public_unlabeled_diff", "dev", "test")


def silent(_spk: str, utts: List[tuple], folder: Path) -> None:
    for utt_id, _ in utts:
        soundfile.write(folder / f"{utt_id}.flac", np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")


def make_librispeech(root: Path, speak: Callable[[str, List[tuple], Path], None], utts_per_spk: int = 3) -> Path:
    """<root>/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt with one <utt>.flac per line."""
    rng = random.Random(0)
    for split, speakers in SPLITS.items():
        for spk in speakers:
            chapter = str(1000 + int(spk))
            folder = root / split / spk / chapter
            folder.mkdir(parents=True)
            utts = [(f"{spk}-{chapter}-{i:04d}", rng.choice(SENTENCES)) for i in range(utts_per_spk)]
            speak(spk, utts, folder)
            (folder / f"{spk}-{chapter}.trans.txt").write_text("".join(f"{u} {t}\n" for u, t in utts))
    return root


@pytest.fixture(scope="module")
def silent_corpus(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("ls") / "LibriSpeech", silent)


def test_sets_lowercase_flac_and_disjoint_speakers(silent_corpus, tmp_path):
    from espnet_pate.data.librispeech import prepare_librispeech
    prepare_librispeech(silent_corpus, load_config(RECIPE / "conf" / "corpus_debug.yaml"), tmp_path, log=lambda _: None)
    owner: Dict[str, str] = {}
    for name in SETS:
        d = read_kaldi_dir(tmp_path / name)
        assert d.wav_scp and all(p.endswith(".flac") and os.path.isfile(p) for p in d.wav_scp.values())
        assert all(t == t.lower() and t.split() for t in d.text.values())
        for spk in set(d.utt2spk.values()):
            assert owner.setdefault(spk, name) == name, f"speaker {spk} in {owner[spk]} and {name}"
    assert set(read_kaldi_dir(tmp_path / "dev").utt2spk.values()) == set(SPLITS["dev-clean"])
    assert set(read_kaldi_dir(tmp_path / "public_unlabeled_diff").utt2spk.values()) <= set(SPLITS["train-other-500"])
    texts = [t for n in SETS for t in read_kaldi_dir(tmp_path / n).text.values()]
    assert "i don't think so said he" in texts  # apostrophes kept, case lowered


def test_diff_set_takes_whole_speakers_up_to_its_limit(silent_corpus):
    plans = plan_corpus(silent_corpus, LibriConfig(seed=2026, diff_max_utts=2))
    assert len({u.speaker for u in plans["public_unlabeled_diff"]}) == 1 and len(plans["public_unlabeled_diff"]) == 3


def test_a_speaker_split_moves_no_other_speaker_when_one_is_added():
    config = LibriConfig(seed=2026)
    speakers = [str(i) for i in range(100, 160)]
    before, after = split_speakers(speakers, config), split_speakers(speakers + ["999"], config)
    for name in before:
        assert set(after[name]) - {"999"} == set(before[name])
    assert 15 <= len(before["sensitive"]) <= 45  # about half of 60


def test_layout_errors_name_file_and_line(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech", silent, utts_per_spk=1)
    trans = root / "dev-clean" / "84" / "1084" / "84-1084.trans.txt"
    trans.write_text(trans.read_text() + "84-1084-0007 MISSING AUDIO\n")
    with pytest.raises(FileNotFoundError, match=r"84-1084.trans.txt:2: no audio .*84-1084-0007.flac"):
        read_split(root, "dev-clean")
    trans.write_text("84-1084-0000\n")
    with pytest.raises(ValueError, match=r"84-1084.trans.txt:1: expected"):
        read_split(root, "dev-clean")
    with pytest.raises(FileNotFoundError, match="openslr.org/12"):
        read_split(root, "train-clean-360")
    trans.write_text("84-1084-0000 A LINE\n")
    (root / "test-clean" / "20").mkdir()  # speaker 20 of train-other-500 again
    shutil.copytree(root / "train-other-500" / "20" / "1020", root / "test-clean" / "20" / "1020")
    with pytest.raises(ValueError, match="speaker 20 is in both public_unlabeled_diff and test"):
        plan_corpus(root, LibriConfig(seed=2026))


def test_gpu_configs_keep_the_pretrain_architecture():
    keys = ("frontend", "frontend_conf", "specaug", "specaug_conf", "encoder_conf", "decoder", "decoder_conf",
            "joint_network_conf", "model_conf")
    base = yaml.safe_load((RECIPE / "conf" / "train_pretrain.yaml").read_text())
    for name in ("train_teacher_full", "train_teacher_top", "train_teacher_head", "train_student", "train_dpsgd"):
        conf = yaml.safe_load((RECIPE / "conf" / f"{name}.yaml").read_text())
        assert all(conf.get(k) == base.get(k) for k in keys), name


def espeak_speaker(seed: int) -> Callable[[str, List[tuple], Path], None]:
    from espnet_pate.data import synth_audio
    from espnet_pate.data.synth_speakers import sample_espeak_speaker

    def speak(spk: str, utts: List[tuple], folder: Path) -> None:
        speaker = sample_espeak_speaker(f"ls{spk}", random.Random(f"{seed}/{spk}"))
        voices = synth_audio.EspeakVoices(folder / ".espeak")
        synth_audio.render_espeak(speaker, [(u, t.lower()) for u, t in utts], folder, voices, seed)
        shutil.rmtree(folder / ".espeak")
        for utt_id, _ in utts:
            wav = folder / f"{utt_id}.wav"
            audio, rate = soundfile.read(wav, dtype="int16")
            soundfile.write(folder / f"{utt_id}.flac", audio, rate, subtype="PCM_16")
            wav.unlink()
    return speak


@pytest.mark.slow
@pytest.mark.skipif(any(shutil.which(t) is None for t in ("espeak-ng", "sox")), reason="needs espeak-ng and sox")
def test_recipe_stages_1_to_3_on_a_tiny_librispeech(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech", espeak_speaker(2026))
    out = tmp_path / "recipe"
    env = {**os.environ, "LIBRISPEECH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [str(RECIPE / "run.sh"), "--debug", "true", "--stage", "1", "--stop-stage", "3", "--ngpu", "0",
           "--token_type", "char", "--num_teachers", "2", "--shadow_teachers", "false", "--teacher_valid_utts", "4",
           "--datadir", str(out / "data"), "--dumpdir", str(out / "dump"), "--expdir", str(out / "exp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "data" / "sensitive" / "wav.scp").read_text().split()[1].endswith(".flac")
    assert (out / "exp" / "public_only" / "valid.loss.ave.pth").is_file()
    for k in range(2):
        assert (out / "exp" / "teachers_head_k2" / f"teacher_{k}" / "valid.loss.ave.pth").is_file()
    # The GPU-sized model builds and takes a training epoch (on the CPU) from the recipe's own config.
    gpu = subprocess.run(
        ["local/train_asr.sh", "--outdir", str(out / "exp" / "gpu_config_check"),
         "--config", str(RECIPE / "conf" / "train_pretrain.yaml"), "--train", str(out / "data" / "public_labeled"),
         "--datadir", str(out / "data"), "--dumpdir", str(out / "dump"), "--expdir", str(out / "exp"),
         "--", "--max_epoch", "1", "--batch_type", "sorted", "--batch_size", "2", "--num_workers", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert gpu.returncode == 0, gpu.stdout[-3000:] + gpu.stderr[-3000:]
    assert (out / "exp" / "gpu_config_check" / "1epoch.pth").is_file()

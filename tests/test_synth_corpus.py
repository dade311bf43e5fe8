"""The default synthetic corpus: grammar split, speakers, sentences, audio, determinism and resume."""
from __future__ import annotations

import re
import shutil
import wave
from pathlib import Path

import pytest

from espnet_pate.data import synth_audio
from espnet_pate.data.grammar import (FULL, PUBLIC, WITHHELD_NAMES, WITHHELD_PLACES, Grammar, Withheld,
                                      sample_sentences, spoken_form, withheld_vocabulary)
from espnet_pate.data.kaldi_dir import read_kaldi_dir, read_table
from espnet_pate.data.synth_corpus import SETS, is_done, load_config, prepare_synth_corpus

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "conf" / "corpus_debug.yaml"
TRAINING = ["public_labeled", "sensitive", "public_unlabeled", "public_unlabeled_diff"]
needs_tts = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("espeak-ng", "flite", "festival", "sox")),
    reason="needs espeak-ng, flite, festival and sox (Debian packages)",
)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    prepare_synth_corpus(load_config(DEBUG_CONFIG), out, nj=2, log=_quiet)
    return out


def _texts(out: Path, name: str) -> dict:
    return read_kaldi_dir(out / name).text


def _words(out: Path, name: str) -> set:
    return {w for t in _texts(out, name).values() for w in t.split()}


# --- grammar (no synthesis) ---

def test_sentences_are_normalised_words():
    sentences = sample_sentences({"a": (FULL, 300)}, seed=1)["a"]
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", s) for _, s in sentences)
    assert "a.m." in spoken_form("set an alarm for seven a m")


def test_sentences_depend_only_on_the_seed():
    assert sample_sentences({"a": (FULL, 50)}, seed=3) == sample_sentences({"a": (FULL, 50)}, seed=3)
    assert sample_sentences({"a": (FULL, 50)}, seed=3) != sample_sentences({"a": (FULL, 50)}, seed=4)


def test_withheld_vocabulary_is_outside_the_public_grammar():
    withheld = withheld_vocabulary(Withheld(["navigation"]))
    assert set(WITHHELD_NAMES) | set(WITHHELD_PLACES) | {"navigate", "directions"} <= withheld
    assert not withheld & Grammar(PUBLIC, Withheld(["navigation"])).vocabulary()
    assert "navigation" not in Grammar(PUBLIC, Withheld(["navigation"])).types
    assert 300 <= len(Grammar(FULL).vocabulary()) <= 400


def test_few_withheld_words_drawn_often():
    withheld = Withheld(types=(), names=2, places=3, share=0.5)
    assert withheld_vocabulary(withheld) == set(WITHHELD_NAMES[:2]) | set(WITHHELD_PLACES[:3])
    sentences = [s for _, s in sample_sentences({"a": (FULL, 2000)}, seed=5, withheld=withheld)["a"]]
    slot_values = {"name": set(WITHHELD_NAMES[:2]), "place": set(WITHHELD_PLACES[:3])}
    public_values = {"name": set(Grammar(PUBLIC).slots["name"]), "place": set(Grammar(PUBLIC).slots["place"])}
    for slot in ("name", "place"):
        held = sum(bool(set(s.split()) & slot_values[slot]) for s in sentences)
        public = sum(bool(set(s.split()) & public_values[slot]) for s in sentences)
        assert 0.4 < held / (held + public) < 0.6, slot  # share 0.5, against 3/23 or 2/26 when uniform
    assert not set(WITHHELD_NAMES[2:]) & {w for s in sentences for w in s.split()}
    with pytest.raises(ValueError, match="share"):
        Withheld(share=1.5)


def test_default_withheld_keeps_the_corpus_fingerprint(tmp_path):
    """Corpora built before the withheld_* keys existed must not be rebuilt."""
    base = "seed: 1\nsets: {dev: {speakers: 2, utts_per_speaker: 2}}\n"
    (tmp_path / "a.yaml").write_text(base)
    (tmp_path / "b.yaml").write_text(base + "withheld_names: 16\nwithheld_places: 14\n")
    (tmp_path / "c.yaml").write_text(base + "withheld_names: 3\n")
    fp = {k: load_config(tmp_path / f"{k}.yaml").fingerprint("dev") for k in "abc"}
    assert fp["a"] == fp["b"] != fp["c"]
    (tmp_path / "d.yaml").write_text(base + "withheld_places: 99\n")
    with pytest.raises(ValueError, match="d.yaml"):
        load_config(tmp_path / "d.yaml")


# --- the built debug corpus ---

@needs_tts
def test_speaker_counts(corpus):
    config = load_config(DEBUG_CONFIG)
    assert set(config.sets) == set(SETS)
    assert config.sets["sensitive"].speakers >= 8  # 4 speaker-disjoint teachers need at least 8
    for name, size in config.sets.items():
        d = read_kaldi_dir(corpus / name)
        assert len(set(d.utt2spk.values())) == size.speakers
        assert len(d.wav_scp) == size.speakers * size.utts_per_speaker
        assert set(read_table(corpus / name / "spk2gender")) == set(d.utt2spk.values())
        assert all(u.startswith(s + "-") for u, s in d.utt2spk.items())


@needs_tts
def test_speakers_are_disjoint_across_sets(corpus):
    speakers = {n: set(read_kaldi_dir(corpus / n).utt2spk.values()) for n in SETS}
    names = list(SETS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not speakers[a] & speakers[b], (a, b)


@needs_tts
def test_sentences_do_not_overlap_across_sets(corpus):
    texts = {n: set(_texts(corpus, n).values()) for n in SETS}
    names = list(SETS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], (a, b)


@needs_tts
def test_withheld_vocabulary_only_on_the_sensitive_side(corpus):
    withheld = set((corpus / "withheld_words.txt").read_text().split())
    assert withheld == withheld_vocabulary(load_config(DEBUG_CONFIG).withheld)
    assert not withheld & _words(corpus, "public_labeled")
    assert "navigation" not in set(read_table(corpus / "public_labeled" / "utt2reqtype").values())
    for name in ["sensitive", "public_unlabeled", "public_unlabeled_diff", "dev", "test"]:
        words = _words(corpus, name)
        assert words & set(WITHHELD_NAMES) and words & set(WITHHELD_PLACES), name
        assert "navigation" in set(read_table(corpus / name / "utt2reqtype").values()), name


@needs_tts
def test_audio_is_16k_mono_16bit_and_nonempty(corpus):
    for name in SETS:
        for path in read_kaldi_dir(corpus / name).wav_scp.values():
            assert Path(path).is_absolute()
            with wave.open(path, "rb") as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2), path
                assert 0.5 < w.getnframes() / 16000 < 10, path
            audio, _ = synth_audio.read_wav(path)
            assert audio.std() > 100, path  # speech, not silence


def _files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes().replace(str(root).encode(), b"<ROOT>")
            for p in sorted(root.rglob("*")) if p.is_file()}


@needs_tts
def test_same_seed_gives_the_same_bytes(corpus, tmp_path):
    again = tmp_path / "data"
    prepare_synth_corpus(load_config(DEBUG_CONFIG), again, nj=2, log=_quiet)
    first, second = _files(corpus), _files(again)
    assert first.keys() == second.keys()
    assert [p for p in first if first[p] != second[p]] == []


@needs_tts
def test_finished_sets_are_skipped(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    result = prepare_synth_corpus(load_config(DEBUG_CONFIG), corpus, log=_quiet)
    assert set(result.values()) == {"skipped"}
    after = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file() and p.name != "withheld_words.txt"}
    assert all(before[p] == t for p, t in after.items())


@needs_tts
def test_a_killed_build_leaves_no_finished_looking_set(tmp_path, monkeypatch):
    config = load_config(DEBUG_CONFIG)
    real_render = synth_audio.render_espeak

    def dies_on_third_speaker(speaker, *args, **kwargs):
        if speaker.spk_id.endswith("0003"):
            raise KeyboardInterrupt
        return real_render(speaker, *args, **kwargs)

    monkeypatch.setattr(synth_audio, "render_espeak", dies_on_third_speaker)
    with pytest.raises(KeyboardInterrupt):
        prepare_synth_corpus(config, tmp_path, nj=1, sets=["dev"], log=_quiet)
    assert not (tmp_path / "dev").exists() and not is_done(tmp_path, "dev", config)

    monkeypatch.setattr(synth_audio, "render_espeak", real_render)
    assert prepare_synth_corpus(config, tmp_path, nj=1, sets=["dev"], log=_quiet) == {"dev": "built"}
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "wav").glob(".*.tmp"))


@needs_tts
def test_a_set_is_redone_when_what_it_depends_on_changes(corpus):
    config = load_config(DEBUG_CONFIG)
    assert all(is_done(corpus, name, config) for name in SETS)
    config.sets["public_unlabeled_diff"].speakers += 1  # drawn last: nothing else depends on it
    assert [n for n in SETS if not is_done(corpus, n, config)] == ["public_unlabeled_diff"]
    config.sets["public_labeled"].utts_per_speaker += 1  # the sets drawn after it get other sentences
    assert [n for n in SETS if not is_done(corpus, n, config)] == TRAINING
    config.seed += 1
    assert not any(is_done(corpus, n, config) for n in SETS)


@needs_tts
def test_each_espeak_speaker_renders_from_a_folder_of_its_own_voice(tmp_path, monkeypatch):
    # espeak-ng lists at most 349 voices: with 300 speakers in one shared folder about 80 got another voice, which
    # ones depending on what the parallel jobs had written (found on the 300-speaker public_labeled).
    real_render = synth_audio.render_espeak
    seen = []

    def checked(speaker, utts, wav_dir, voices, seed):
        real_render(speaker, utts, wav_dir, voices, seed)
        seen.append(sorted(p.name for p in (voices.root / "espeak-ng-data" / "voices" / "!v").iterdir()))
        assert seen[-1] == [speaker.spk_id]

    monkeypatch.setattr(synth_audio, "render_espeak", checked)
    prepare_synth_corpus(load_config(DEBUG_CONFIG), tmp_path, nj=2, sets=["dev"], log=_quiet)
    assert len(seen) == len(read_kaldi_dir(tmp_path / "dev").spk2utt()) > 1

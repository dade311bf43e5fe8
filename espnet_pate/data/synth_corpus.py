"""The default corpus: synthetic voice-assistant requests as Kaldi data directories.

    from espnet_pate.data.synth_corpus import load_config, prepare_synth_corpus, corpus_stats
    prepare_synth_corpus(load_config("conf/corpus.yaml"), "data", nj=2)

Writes, under `out`:
- `<set>/` Kaldi directories `wav.scp text utt2spk spk2utt`, plus `spk2gender`, `spk2voice` (how each speaker
  was made), `utt2reqtype` (request type per utterance) and `.done`. The sets:
  `public_labeled` (public vocabulary only), `sensitive`, `public_unlabeled` (espeak-ng speakers like the
  sensitive ones), `public_unlabeled_diff` (flite/festival voices through rooms, noise and telephone lines),
  `dev`, `test`. The `text` of both public_unlabeled sets is their true transcript, there only to measure
  pseudo-label WER: nothing may train on it.
- `wav/<set>/<speaker>/<utt>.wav`: 16 kHz mono 16-bit; `wav.scp` holds absolute paths.
  `wav/<set>/voices/<speaker>`: each espeak-ng speaker's voice file.
- `withheld_words.txt`: words the sensitive-side sets can hold and public_labeled never does.

Speakers never repeat across sets, nor sentences. A set is built in hidden temporary folders and renamed when
complete, so a killed run never leaves a set that looks finished; a rerun skips sets whose `.done` matches
the configuration and rebuilds the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import yaml

from espnet_pate.data import synth_audio
from espnet_pate.data.grammar import FULL, PUBLIC, Withheld, sample_sentences, withheld_vocabulary
from espnet_pate.data.kaldi_dir import read_kaldi_dir, write_kaldi_dir, write_table
from espnet_pate.data.synth_speakers import (DEFAULT_CHANNEL_MIX, DEFAULT_SNR_DB, EspeakSpeaker,
                                             OtherSpeaker, sample_espeak_speaker, sample_other_speaker)

CORPUS_VERSION = 1  # part of every set's fingerprint: bump when the same config would give other audio

# name: (grammar domain, speech source, speaker-id prefix). Sentences are drawn in this order, dev and test
# first, so that resizing a training set leaves the evaluation sets unchanged.
SETS: Dict[str, Tuple[str, str, str]] = {
    "dev": (FULL, "espeak", "dev"),
    "test": (FULL, "espeak", "test"),
    "public_labeled": (PUBLIC, "espeak", "pl"),
    "sensitive": (FULL, "espeak", "sens"),
    "public_unlabeled": (FULL, "espeak", "pu"),
    "public_unlabeled_diff": (FULL, "other", "pud"),
}
TOOLS = {"espeak": ["espeak-ng", "sox"], "other": ["flite", "festival", "sox"]}

Speaker = Union[EspeakSpeaker, OtherSpeaker]


@dataclass
class SetSize:
    speakers: int
    utts_per_speaker: int


@dataclass
class CorpusConfig:
    seed: int
    sets: Dict[str, SetSize]
    withheld: Withheld = field(default_factory=Withheld)
    max_words: int = 12
    channel_mix: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CHANNEL_MIX))
    snr_db: Tuple[float, float] = DEFAULT_SNR_DB

    def draw_order(self) -> List[str]:
        return [name for name in SETS if name in self.sets]

    def fingerprint(self, name: str) -> str:
        """What set `name` depends on: its sentences depend on the sets drawn before it too."""
        order = self.draw_order()
        drawn = order[:order.index(name) + 1]
        deps = {
            "version": CORPUS_VERSION,
            "seed": self.seed,
            "sets": {k: vars(self.sets[k]) for k in drawn},
            "withheld_request_types": list(self.withheld.types),
            "max_words": self.max_words,
        }
        # Only where they differ from the grammar's defaults, so that corpora built before these keys keep their
        # fingerprints (and are not rebuilt).
        deps.update({key: value for key, value in vars(self.withheld).items()
                     if key != "types" and value != getattr(Withheld(), key)})
        if SETS[name][1] == "other":
            deps.update(channel_mix=dict(self.channel_mix), snr_db=list(self.snr_db))
        return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: os.PathLike | str) -> CorpusConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {"seed", "sets", "withheld_request_types", "withheld_names", "withheld_places", "withheld_share",
             "max_words", "different_source"}
    if set(raw) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(raw) - known)}; known: {sorted(known)}")
    sets = raw.get("sets") or {}
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"{path}: unknown sets {sorted(unknown)}; known: {list(SETS)}")
    sizes = {}
    for name in SETS:
        if name in sets:
            spec = sets[name]
            sizes[name] = SetSize(int(spec["speakers"]), int(spec["utts_per_speaker"]))
            if not (1 <= sizes[name].speakers <= 9999 and 1 <= sizes[name].utts_per_speaker <= 999):
                raise ValueError(f"{path}: set '{name}' needs 1-9999 speakers and 1-999 utterances each")
    other = raw.get("different_source") or {}
    return CorpusConfig(
        seed=int(raw.get("seed", 0)),
        sets=sizes,
        withheld=_withheld(raw, path),
        max_words=int(raw.get("max_words", 12)),
        channel_mix={k: float(v) for k, v in (other.get("channel_mix") or DEFAULT_CHANNEL_MIX).items()},
        snr_db=tuple(float(x) for x in other.get("snr_db", DEFAULT_SNR_DB)),
    )


def _withheld(raw: Mapping, path: os.PathLike | str) -> Withheld:
    default = Withheld()
    try:
        return Withheld(
            types=tuple(raw.get("withheld_request_types", default.types)),
            names=int(raw.get("withheld_names", default.names)),
            places=int(raw.get("withheld_places", default.places)),
            share=None if raw.get("withheld_share") is None else float(raw["withheld_share"]),
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


@dataclass
class SetPlan:
    name: str
    source: str
    speakers: List[Speaker]
    utts: Dict[str, List[Tuple[str, str, str]]]  # speaker id -> [(utt id, request type, sentence)]


def plan_corpus(config: CorpusConfig) -> Dict[str, SetPlan]:
    """Every set's speakers and sentences (cheap: no audio)."""
    sentences = sample_sentences(
        {name: (SETS[name][0], config.sets[name].speakers * config.sets[name].utts_per_speaker)
         for name in config.draw_order()},
        config.seed, config.withheld, config.max_words,
    )
    plans = {}
    for name in config.draw_order():
        size = config.sets[name]
        _, source, prefix = SETS[name]
        speakers: List[Speaker] = []
        utts: Dict[str, List[Tuple[str, str, str]]] = {}
        for i in range(size.speakers):
            spk_id = f"{prefix}{i + 1:04d}"
            rng = random.Random(f"{config.seed}/speaker/{spk_id}")
            speakers.append(sample_espeak_speaker(spk_id, rng) if source == "espeak"
                            else sample_other_speaker(spk_id, rng, config.channel_mix, config.snr_db))
            chunk = sentences[name][i * size.utts_per_speaker:(i + 1) * size.utts_per_speaker]
            utts[spk_id] = [(f"{spk_id}-{j + 1:03d}", rtype, text) for j, (rtype, text) in enumerate(chunk)]
        plans[name] = SetPlan(name, source, speakers, utts)
    return plans


def is_done(out: Path, name: str, config: CorpusConfig) -> bool:
    marker = out / name / ".done"
    return marker.is_file() and marker.read_text().strip() == config.fingerprint(name)


def _check_tools(source: str) -> None:
    missing = [t for t in TOOLS[source] if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: install the Debian packages espeak-ng flite festival "
                           "festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox (tools/setup_venv.sh does)")


def build_set(plan: SetPlan, out: Path, config: CorpusConfig, nj: int = 2) -> None:
    final_dir, final_wav = out / plan.name, out / "wav" / plan.name
    tmp_dir, tmp_wav = out / f".{plan.name}.tmp", out / "wav" / f".{plan.name}.tmp"
    for stale in (final_dir, tmp_dir, final_wav, tmp_wav):
        shutil.rmtree(stale, ignore_errors=True)
    for spk in plan.speakers:
        (tmp_wav / spk.spk_id).mkdir(parents=True)

    with tempfile.TemporaryDirectory(prefix="espeak_home_") as home:

        def render(spk: Speaker) -> None:
            utts = [(u, text) for u, _, text in plan.utts[spk.spk_id]]
            if plan.source == "espeak":
                # One data folder per speaker: espeak-ng lists at most 349 voices (its 131 languages and the
                # variants), so with a shared folder of 300 speakers about 80 of them silently got another voice,
                # which ones depending on what the parallel jobs had added.
                voices = synth_audio.EspeakVoices(Path(home) / spk.spk_id)
                synth_audio.render_espeak(spk, utts, tmp_wav / spk.spk_id, voices, config.seed)
            else:
                synth_audio.render_other(spk, utts, tmp_wav / spk.spk_id, config.seed)

        pool = ThreadPoolExecutor(max_workers=max(1, nj))  # the work runs in the synthesiser processes
        try:
            list(pool.map(render, plan.speakers))
        finally:
            pool.shutdown(cancel_futures=True)  # on an error or Ctrl-C, start no further speakers

    if plan.source == "espeak":
        (tmp_wav / "voices").mkdir()
        for spk in plan.speakers:
            (tmp_wav / "voices" / spk.spk_id).write_text(spk.voice_file())
    rows = [(spk, u, rtype, text) for spk in plan.speakers for u, rtype, text in plan.utts[spk.spk_id]]
    write_kaldi_dir(
        tmp_dir,
        wav_scp={u: str(final_wav / spk.spk_id / f"{u}.wav") for spk, u, _, _ in rows},
        utt2spk={u: spk.spk_id for spk, u, _, _ in rows},
        text={u: text for _, u, _, text in rows},
    )
    write_table(tmp_dir / "utt2reqtype", ((u, rtype) for _, u, rtype, _ in rows))
    write_table(tmp_dir / "spk2gender", ((s.spk_id, s.gender) for s in plan.speakers))
    write_table(tmp_dir / "spk2voice", ((s.spk_id, s.describe()) for s in plan.speakers))
    (tmp_dir / ".done").write_text(config.fingerprint(plan.name) + "\n")
    os.replace(tmp_wav, final_wav)
    os.replace(tmp_dir, final_dir)  # last: the set counts as done only once everything is in place


def write_withheld_words(out: Path, config: CorpusConfig) -> None:
    tmp = out / "withheld_words.txt.tmp"
    tmp.write_text("".join(w + "\n" for w in sorted(withheld_vocabulary(config.withheld))))
    os.replace(tmp, out / "withheld_words.txt")


def prepare_synth_corpus(config: CorpusConfig, out_dir: os.PathLike | str, nj: int = 2,
                         sets: Optional[Iterable[str]] = None,
                         log: Callable[[str], None] = print) -> Dict[str, str]:
    """Build the corpus's sets under `out_dir` (all configured ones, or `sets`); returns set -> built|skipped."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(config)
    names = list(sets) if sets is not None else list(plans)
    unknown = set(names) - set(plans)
    if unknown:
        raise ValueError(f"sets {sorted(unknown)} are not in the configuration ({list(plans)})")
    write_withheld_words(out, config)
    result = {}
    for name in names:
        if is_done(out, name, config):
            log(f"[synth] {name}: done already ({out / name}/.done), skipped")
            result[name] = "skipped"
            continue
        plan = plans[name]
        _check_tools(plan.source)
        start = time.time()
        n_utts = sum(len(u) for u in plan.utts.values())
        log(f"[synth] {name}: {n_utts} utterances from {len(plan.speakers)} {plan.source} speakers ...")
        build_set(plan, out, config, nj)
        log(f"[synth] {name}: written to {out / name} in {time.time() - start:.1f} s")
        result[name] = "built"
    return result


def _wav_seconds(path: str) -> float:
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


def corpus_stats(out_dir: os.PathLike | str, sets: Optional[Iterable[str]] = None) -> List[Dict[str, object]]:
    """Utterances, speakers, words and hours of each built set."""
    out = Path(out_dir)
    rows = []
    for name in sets if sets is not None else SETS:
        if not (out / name / ".done").is_file():
            continue
        d = read_kaldi_dir(out / name)
        rows.append({
            "set": name,
            "utts": len(d.wav_scp),
            "speakers": len(set(d.utt2spk.values())),
            "words": sum(len(t.split()) for t in d.text.values()),
            "vocab": len({w for t in d.text.values() for w in t.split()}),
            "hours": sum(_wav_seconds(p) for p in d.wav_scp.values()) / 3600,
        })
    return rows


def format_stats(rows: List[Mapping[str, object]]) -> str:
    lines = [f"{'set':<24}{'utts':>7}{'speakers':>10}{'words':>8}{'vocab':>7}{'hours':>8}"]
    for r in rows:
        lines.append(f"{r['set']:<24}{r['utts']:>7}{r['speakers']:>10}{r['words']:>8}{r['vocab']:>7}"
                     f"{r['hours']:>8.3f}")
    return "\n".join(lines)

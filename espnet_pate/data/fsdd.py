"""Connected-digit utterances from the Free Spoken Digit Dataset (FSDD), as the recipe's six Kaldi directories.

FSDD (github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0) holds isolated digits, 8 kHz mono,
named `{digit}_{speaker}_{take}.wav`. The procedure, a pure function of the configuration and the sorted file list:

1. Speakers in `held_out_speakers` give dev and test; the others give the four training sets.
2. Each speaker's recordings form one pool, shuffled by `random.Random(seed)`. Sets are drawn in the order of
   SETS; utterance i of a set belongs to the set's speaker i mod (number of speakers).
3. An utterance takes n recordings from its speaker's pool (n uniform in `digits_per_utt`), without
   replacement: every recording is used once in the whole corpus, so no recording is in two sets or two
   utterances. public_labeled draws only recordings of digits outside `withheld_words`.
4. Audio: silence before, between and after the digits (each gap uniform in `gap_seconds`, a faint dither so that
   no frame is digital zero), resampled 8 -> 16 kHz (polyphase, scipy). public_unlabeled_diff goes through a
   different channel: pink noise at `diff_snr_db`, then the telephone band through 8 kHz mu-law
   (espnet_pate.data.synth_audio, the synthetic corpus's channel).
Transcripts are the words "zero" .. "nine". `<set>/utt2source` lists each utterance's FSDD files in order.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import yaml
from scipy.signal import resample_poly

from espnet_pate.data.kaldi_dir import write_kaldi_dir, write_table
from espnet_pate.data.synth_audio import add_noise, read_wav, telephone, write_wav
from espnet_pate.data.synth_speakers import Channel

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SETS = ("public_labeled", "sensitive", "public_unlabeled", "public_unlabeled_diff", "dev", "test")
HELD_OUT_SETS = ("dev", "test")
SOURCE_RATE, SAMPLE_RATE = 8000, 16000
_NAME = re.compile(r"^([0-9])_([A-Za-z0-9]+)_([0-9]+)\.wav$")
_DITHER = 2.0  # standard deviation of the gaps' noise, in 16-bit steps


@dataclass(frozen=True)
class Recording:
    path: str
    digit: int
    speaker: str
    take: int


@dataclass
class FsddConfig:
    seed: int
    held_out_speakers: List[str]
    utterances: Dict[str, int]
    digits_per_utt: Tuple[int, int] = (2, 4)
    gap_seconds: Tuple[float, float] = (0.1, 0.3)
    withheld_words: List[str] = field(default_factory=list)
    diff_snr_db: Tuple[float, float] = (10.0, 20.0)


@dataclass
class Utterance:
    utt_id: str
    speaker: str
    recordings: List[Recording]
    gaps: List[float]  # len(recordings) + 1 seconds of silence

    @property
    def text(self) -> str:
        return " ".join(WORDS[r.digit] for r in self.recordings)


def load_config(path: os.PathLike | str) -> FsddConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {"seed", "held_out_speakers", "sets", "digits_per_utt", "gap_seconds", "withheld_words", "diff_snr_db"}
    if set(raw) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(raw) - known)}; known: {sorted(known)}")
    sets = raw.get("sets") or {}
    if sorted(sets) != sorted(SETS):
        raise ValueError(f"{path}: 'sets' must give every one of {list(SETS)}, got {sorted(sets)}")
    config = FsddConfig(
        seed=int(raw.get("seed", 0)),
        held_out_speakers=[str(s) for s in raw.get("held_out_speakers") or []],
        utterances={name: int(sets[name]["utterances"]) for name in SETS},
        digits_per_utt=tuple(int(x) for x in raw.get("digits_per_utt", (2, 4))),
        gap_seconds=tuple(float(x) for x in raw.get("gap_seconds", (0.1, 0.3))),
        withheld_words=[str(w) for w in raw.get("withheld_words") or []],
        diff_snr_db=tuple(float(x) for x in raw.get("diff_snr_db", (10.0, 20.0))),
    )
    bad = [w for w in config.withheld_words if w not in WORDS]
    if bad or len(config.withheld_words) >= len(WORDS):
        raise ValueError(f"{path}: withheld_words must be some (not all) of {list(WORDS)}, got {config.withheld_words}")
    if not config.held_out_speakers:
        raise ValueError(f"{path}: held_out_speakers is empty: dev and test need speakers no training set has")
    low, high = config.digits_per_utt
    if not 1 <= low <= high:
        raise ValueError(f"{path}: digits_per_utt must be [min, max] with 1 <= min <= max, got {[low, high]}")
    return config


def list_recordings(root: os.PathLike | str) -> List[Recording]:
    """FSDD's recordings under `root` (its `recordings/` folder, or that folder itself), sorted by file name."""
    root = Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .wav files; get FSDD from "
                                "https://github.com/Jakobovski/free-spoken-digit-dataset (its recordings/ folder)")
    out = []
    for f in files:
        m = _NAME.match(f.name)
        if not m:
            raise ValueError(f"{f}: not an FSDD file name ({{digit}}_{{speaker}}_{{take}}.wav)")
        out.append(Recording(str(f.resolve()), int(m.group(1)), m.group(2), int(m.group(3))))
    return out


def plan_corpus(recordings: List[Recording], config: FsddConfig) -> Dict[str, List[Utterance]]:
    """Set name -> its utterances (steps 1-3 of the module's procedure)."""
    rng = random.Random(config.seed)
    speakers = sorted({r.speaker for r in recordings})
    missing = sorted(set(config.held_out_speakers) - set(speakers))
    if missing:
        raise ValueError(f"held_out_speakers {missing} have no recordings (speakers found: {speakers})")
    training = [s for s in speakers if s not in config.held_out_speakers]
    if not training:
        raise ValueError(f"every speaker ({speakers}) is held out: no speaker is left for the training sets")
    pools: Dict[str, List[Recording]] = {}
    for spk in speakers:
        pools[spk] = [r for r in recordings if r.speaker == spk]
        rng.shuffle(pools[spk])
    withheld = {WORDS.index(w) for w in config.withheld_words}
    plans: Dict[str, List[Utterance]] = {}
    for name in SETS:
        spks = sorted(config.held_out_speakers) if name in HELD_OUT_SETS else training
        allowed = (lambda r: r.digit not in withheld) if name == "public_labeled" else (lambda r: True)
        plans[name] = []
        for i in range(config.utterances[name]):
            spk = spks[i % len(spks)]
            n = rng.randint(*config.digits_per_utt)
            eligible = [j for j, r in enumerate(pools[spk]) if allowed(r)]
            if len(eligible) < n:
                raise ValueError(f"speaker {spk} has {len(eligible)} usable recordings left for {name} utterance "
                                 f"{i + 1} (needs {n}): lower sets.{name}.utterances or digits_per_utt")
            picked = sorted(rng.sample(eligible, n), reverse=True)
            recs = [pools[spk].pop(j) for j in picked]
            gaps = [round(rng.uniform(*config.gap_seconds), 3) for _ in range(n + 1)]
            plans[name].append(Utterance(f"{spk}-{name}-{i:04d}", spk, recs, gaps))
    return plans


def render_utterance(utt: Utterance, seed: int) -> np.ndarray:
    """16 kHz samples (float, 16-bit scale) of the digits with their gaps."""
    noise = np.random.default_rng(int(hashlib.sha256(f"{seed}/{utt.utt_id}".encode()).hexdigest()[:16], 16))
    parts = []
    for k, gap in enumerate(utt.gaps):
        parts.append(_DITHER * noise.standard_normal(int(round(gap * SOURCE_RATE))))
        if k < len(utt.recordings):
            audio, rate = read_wav(utt.recordings[k].path)
            if rate != SOURCE_RATE:
                raise ValueError(f"{utt.recordings[k].path}: sample rate {rate}, FSDD's is {SOURCE_RATE}")
            parts.append(audio)
    return resample_poly(np.concatenate(parts), SAMPLE_RATE // SOURCE_RATE, 1)


def fingerprint(recordings: List[Recording], config: FsddConfig) -> str:
    files = [os.path.basename(r.path) for r in recordings]
    deps = {"config": asdict(config), "files": files, "version": 1}
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16]


def write_set(name: str, utts: List[Utterance], out: Path, config: FsddConfig, key: str) -> None:
    final_dir, final_wav = out / name, out / "wav" / name
    tmp_dir, tmp_wav = out / f".{name}.tmp", out / "wav" / f".{name}.tmp"
    for stale in (final_dir, tmp_dir, final_wav, tmp_wav):
        shutil.rmtree(stale, ignore_errors=True)
    tmp_wav.mkdir(parents=True)
    for utt in utts:
        path = tmp_wav / f"{utt.utt_id}.wav"
        write_wav(path, render_utterance(utt, config.seed), SAMPLE_RATE)
        if name == "public_unlabeled_diff":
            channel = Channel(noise="pink", snr_db=config.diff_snr_db)
            add_noise(path, channel, random.Random(f"{config.seed}/{utt.utt_id}"))
            staged = path.with_suffix(".clean.wav")
            os.replace(path, staged)
            telephone(staged, path)
            staged.unlink()
    write_kaldi_dir(tmp_dir, wav_scp={u.utt_id: str(final_wav / f"{u.utt_id}.wav") for u in utts},
                    utt2spk={u.utt_id: u.speaker for u in utts}, text={u.utt_id: u.text for u in utts})
    write_table(tmp_dir / "utt2source", ((u.utt_id, " ".join(os.path.basename(r.path) for r in u.recordings))
                                         for u in utts))
    (tmp_dir / ".done").write_text(key + "\n")
    os.replace(tmp_wav, final_wav)
    os.replace(tmp_dir, final_dir)


def prepare_fsdd(fsdd_root: os.PathLike | str, config: FsddConfig, out_dir: os.PathLike | str,
                 log=print) -> Dict[str, List[Utterance]]:
    """Write the six sets and `withheld_words.txt` under `out_dir`; a set whose `.done` matches is skipped."""
    out = Path(out_dir).resolve()
    recordings = list_recordings(fsdd_root)
    plans = plan_corpus(recordings, config)
    key = fingerprint(recordings, config)
    out.mkdir(parents=True, exist_ok=True)
    words = out / "withheld_words.txt"  # stage 2 then builds dev_public, stage 7 scores their recall
    if config.withheld_words:
        words.write_text("".join(w + "\n" for w in sorted(config.withheld_words)))
    else:
        words.unlink(missing_ok=True)
    for name in SETS:
        marker = out / name / ".done"
        if marker.is_file() and marker.read_text().strip() == key:
            log(f"[fsdd] {name}: done already ({marker}), skipped")
            continue
        write_set(name, plans[name], out, config, key)
        log(f"[fsdd] {name}: {len(plans[name])} utterances, "
            f"{len({u.speaker for u in plans[name]})} speakers -> {out / name}")
    return plans

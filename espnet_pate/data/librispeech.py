"""LibriSpeech (openslr.org/12) in its own layout, as the recipe's six Kaldi directories.

Reads `<root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` (lines `<utt-id> <UPPER CASE TEXT>`) and
the `<utt-id>.flac` files beside it (16 kHz; `wav.scp` points at them: ESPnet reads FLAC through soundfile).
Transcripts are lower-cased (the recipe's normalisation: lower-case words, single spaces; apostrophes kept).

Sets (`conf/corpus.yaml` names the splits and fractions):
- the speakers of `train_split` (train-clean-100) are split by a keyed hash of the speaker id alone (adding or
  removing a speaker moves no other one): `sensitive_fraction` of them -> sensitive, `unlabeled_fraction` ->
  public_unlabeled (public speech similar to the sensitive data), the rest -> public_labeled;
- `diff_split` (train-other-500: noisier speakers, a different kind of source) -> public_unlabeled_diff, at most
  `diff_max_utts` utterances of whole speakers, in hash order;
- `dev_split`, `test_split` (dev-clean, test-clean) -> dev, test: their speakers are in no training split;
- `public_labeled_extra` (e.g. [train-clean-360]): whole splits added to public_labeled, for a stronger public model.
Every speaker is in one set only (checked).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from espnet_pate.data.kaldi_dir import write_kaldi_dir

SETS = ("public_labeled", "sensitive", "public_unlabeled", "public_unlabeled_diff", "dev", "test")


@dataclass
class LibriConfig:
    seed: int = 0
    train_split: str = "train-clean-100"
    dev_split: str = "dev-clean"
    test_split: str = "test-clean"
    diff_split: str = "train-other-500"
    sensitive_fraction: float = 0.5
    unlabeled_fraction: float = 0.2
    diff_max_utts: Optional[int] = 10000
    public_labeled_extra: List[str] = field(default_factory=list)  # whole splits added to public_labeled


@dataclass(frozen=True)
class LibriUtt:
    utt_id: str
    speaker: str
    path: str
    text: str


def load_config(path: os.PathLike | str) -> LibriConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = set(LibriConfig.__dataclass_fields__)
    if set(raw) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(raw) - known)}; known: {sorted(known)}")
    config = LibriConfig(**raw)
    if not (0 < config.sensitive_fraction and 0 <= config.unlabeled_fraction
            and config.sensitive_fraction + config.unlabeled_fraction < 1):
        raise ValueError(f"{path}: need 0 < sensitive_fraction, 0 <= unlabeled_fraction and their sum below 1 "
                         "(public_labeled gets the rest), "
                         f"got {config.sensitive_fraction}, {config.unlabeled_fraction}")
    return config


def read_split(root: os.PathLike | str, split: str) -> List[LibriUtt]:
    """Every utterance of `<root>/<split>`, sorted by id; errors name the file and line."""
    folder = Path(root) / split
    trans_files = sorted(folder.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise FileNotFoundError(f"{folder}: no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt files "
                                "(LibriSpeech's layout; get the corpus from https://www.openslr.org/12)")
    utts = []
    for trans in trans_files:
        speaker, chapter = trans.parent.parent.name, trans.parent.name
        if trans.name != f"{speaker}-{chapter}.trans.txt":
            raise ValueError(f"{trans}: expected the name {speaker}-{chapter}.trans.txt in {trans.parent}")
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 or not parts[0].startswith(f"{speaker}-{chapter}-"):
                raise ValueError(f"{trans}:{lineno}: expected '{speaker}-{chapter}-<n> TEXT', got {line[:60]!r}")
            flac = trans.parent / f"{parts[0]}.flac"
            if not flac.is_file():
                raise FileNotFoundError(f"{trans}:{lineno}: no audio {flac}")
            utts.append(LibriUtt(parts[0], speaker, str(flac.resolve()), normalise(parts[1])))
    return sorted(utts, key=lambda u: u.utt_id)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def speaker_rank(seed: int, speaker: str) -> str:
    return hashlib.sha256(f"{seed}/librispeech/{speaker}".encode()).hexdigest()


def split_speakers(speakers: List[str], config: LibriConfig) -> Dict[str, List[str]]:
    """Training speakers -> sensitive, public_unlabeled, public_labeled by their hash's position in [0, 1)."""
    out: Dict[str, List[str]] = {"sensitive": [], "public_unlabeled": [], "public_labeled": []}
    for spk in sorted(set(speakers)):
        x = int(speaker_rank(config.seed, spk)[:15], 16) / 16 ** 15
        if x < config.sensitive_fraction:
            out["sensitive"].append(spk)
        elif x < config.sensitive_fraction + config.unlabeled_fraction:
            out["public_unlabeled"].append(spk)
        else:
            out["public_labeled"].append(spk)
    empty = [k for k, v in out.items() if not v and (k != "public_unlabeled" or config.unlabeled_fraction > 0)]
    if empty:
        raise ValueError(f"{len(set(speakers))} speakers leave {empty} without a speaker: change the fractions")
    return out


def plan_corpus(root: os.PathLike | str, config: LibriConfig) -> Dict[str, List[LibriUtt]]:
    train = read_split(root, config.train_split)
    groups = split_speakers([u.speaker for u in train], config)
    plans = {name: [u for u in train if u.speaker in set(spks)] for name, spks in groups.items()}
    for split in config.public_labeled_extra:
        plans["public_labeled"] = sorted(plans["public_labeled"] + read_split(root, split), key=lambda u: u.utt_id)
    diff = read_split(root, config.diff_split)
    by_spk: Dict[str, List[LibriUtt]] = {}
    for u in diff:
        by_spk.setdefault(u.speaker, []).append(u)
    plans["public_unlabeled_diff"] = []
    for spk in sorted(by_spk, key=lambda s: speaker_rank(config.seed, s)):
        if config.diff_max_utts is not None and len(plans["public_unlabeled_diff"]) >= config.diff_max_utts:
            break
        plans["public_unlabeled_diff"].extend(by_spk[spk])
    plans["dev"] = read_split(root, config.dev_split)
    plans["test"] = read_split(root, config.test_split)
    _check_disjoint(plans, config)
    return plans


def _check_disjoint(plans: Dict[str, List[LibriUtt]], config: LibriConfig) -> None:
    seen: Dict[str, str] = {}
    for name in SETS:
        for spk in sorted({u.speaker for u in plans[name]}):
            if spk in seen and seen[spk] != name:
                raise ValueError(f"speaker {spk} is in both {seen[spk]} and {name}: the splits "
                                 f"{config.train_split}, {config.diff_split}, {config.dev_split}, "
                                 f"{config.test_split} must have disjoint speakers")
            seen[spk] = name


def prepare_librispeech(root: os.PathLike | str, config: LibriConfig, out_dir: os.PathLike | str,
                        log=print) -> Dict[str, List[LibriUtt]]:
    """Write the six Kaldi directories under `out_dir` (tables only: the audio stays in the corpus)."""
    out = Path(out_dir)
    plans = plan_corpus(root, config)
    for name in SETS:
        utts = plans[name]
        write_kaldi_dir(out / name, wav_scp={u.utt_id: u.path for u in utts},
                        utt2spk={u.utt_id: u.speaker for u in utts}, text={u.utt_id: u.text for u in utts})
        log(f"[librispeech] {name}: {len(utts)} utterances, {len({u.speaker for u in utts})} speakers "
            f"-> {out / name}")
    return plans


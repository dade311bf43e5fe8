"""Recipe stage 2: check a Kaldi data directory before anything trains on it.

Read-only by design: a failed check leaves the directory and every earlier output exactly as they were.
Every problem is a KaldiDirError naming the file and, where there is one, the 1-based line.

Files must be sorted by id in C-locale byte order. ESPnet's own readers do not need it, but Kaldi's
utils/ scripts that ESPnet recipes call (fix_data_dir.sh, subset_data_dir.sh, combine_data.sh) use
`join` and `sort -c`, which drop or mis-pair entries of unsorted files without failing. Our writers always
sort, so only hand-made directories can trip this, and the fix (`LC_ALL=C sort -o f f`) is immediate.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import soundfile

from espnet_pate.data.kaldi_dir import KaldiDir, KaldiDirError, read_table_with_lines

_KALDI_ARK = re.compile(r"\.ark:\d+$")
_LINES_LISTED = 5

Table = Tuple[Dict[str, str], Dict[str, int]]


@dataclass(frozen=True)
class DataDirStats:
    num_utts: int
    num_speakers: int
    seconds: float

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0


def validate_data_dir(path: os.PathLike | str, sample_rate: int = 16000, require_text: bool = True) -> DataDirStats:
    """Check tables and audio headers of a Kaldi data directory; raise KaldiDirError on the first problem.

    Audio problems are all collected first, so one run lists every bad wav.scp line (the first in full).
    Relative audio paths are resolved from the current directory, as ESPnet does.
    """
    kaldi_dir, wav_lines = _read_checked(Path(path), require_text)
    seconds = _check_audio(kaldi_dir.path / "wav.scp", kaldi_dir.wav_scp, wav_lines, sample_rate)
    return DataDirStats(len(kaldi_dir.wav_scp), len(set(kaldi_dir.utt2spk.values())), seconds)


def check_tables(path: os.PathLike | str, require_text: bool = True) -> KaldiDir:
    """The table checks of validate_data_dir without opening any audio; returns the directory's contents."""
    return _read_checked(Path(path), require_text)[0]


def _read_checked(path: Path, require_text: bool) -> Tuple[KaldiDir, Dict[str, int]]:
    if not path.is_dir():
        raise KaldiDirError(path, "not a directory")
    if (path / "segments").exists():
        raise KaldiDirError(path / "segments", "segments files are not supported: cut the recordings into one "
                            "audio file per utterance (wav.scp keyed by utterance id)")
    wav_scp = _read(path / "wav.scp")
    utt2spk = _read(path / "utt2spk")
    spk2utt = _read(path / "spk2utt", missing_hint="make it from utt2spk: awk '{a[$2]=a[$2]\" \"$1} END {for (s in a) "
                    "print s a[s]}' utt2spk | LC_ALL=C sort > spk2utt")
    text: Optional[Table] = None
    if require_text or (path / "text").exists():
        text = _read(path / "text", allow_empty_value=True, missing_hint="pass --no-text for an untranscribed directory")

    _check_same_ids(path / "wav.scp", wav_scp, path / "utt2spk", utt2spk)
    if text is not None:
        _check_same_ids(path / "wav.scp", wav_scp, path / "text", text)
        _check_transcripts(path / "text", text)
    _check_utt2spk(path / "utt2spk", utt2spk)
    _check_spk2utt(path / "spk2utt", spk2utt, path / "utt2spk", utt2spk)

    kaldi_dir = KaldiDir(path=path, wav_scp=wav_scp[0], utt2spk=utt2spk[0], text=text[0] if text else {})
    return kaldi_dir, wav_scp[1]


def _read(file: Path, allow_empty_value: bool = False, missing_hint: str = "") -> Table:
    if not file.is_file():
        raise KaldiDirError(file, "missing" + (f" ({missing_hint})" if missing_hint else ""))
    table, lines = read_table_with_lines(file, allow_empty_value)
    if not table:
        raise KaldiDirError(file, "has no entries")
    previous = b""
    for key in table:
        if key.startswith("\ufeff"):
            raise KaldiDirError(file, "starts with a UTF-8 byte-order mark; save it without one", lines[key])
        current = key.encode("utf-8")
        if current < previous:
            raise KaldiDirError(file, f"not sorted: '{key}' comes after '{previous.decode()}' (Kaldi needs files "
                                f"sorted by id in byte order; fix with: LC_ALL=C sort -o {file} {file})", lines[key])
        previous = current
    return table, lines


def _check_same_ids(ref_file: Path, ref: Table, other_file: Path, other: Table) -> None:
    for key, line in other[1].items():
        if key not in ref[0]:
            raise KaldiDirError(other_file, f"utterance '{key}' is not in {ref_file.name}", line)
    for key, line in ref[1].items():
        if key not in other[0]:
            raise KaldiDirError(ref_file, f"utterance '{key}' has no entry in {other_file.name}", line)


def _check_transcripts(file: Path, text: Table) -> None:
    for utt, transcript in text[0].items():
        if not transcript:
            raise KaldiDirError(file, f"empty transcript for '{utt}'", text[1][utt])


def _check_utt2spk(file: Path, utt2spk: Table) -> None:
    for utt, spk in utt2spk[0].items():
        if len(spk.split()) != 1:
            raise KaldiDirError(file, f"expected 'utterance speaker', got more than one speaker for '{utt}'",
                                utt2spk[1][utt])


def _check_spk2utt(file: Path, spk2utt: Table, utt2spk_file: Path, utt2spk: Table) -> None:
    listed = set()
    for spk, utts in spk2utt[0].items():
        for utt in utts.split():
            if utt in listed:
                raise KaldiDirError(file, f"utterance '{utt}' is listed twice", spk2utt[1][spk])
            owner = utt2spk[0].get(utt)
            if owner != spk:
                said = f"gives speaker '{owner}'" if owner is not None else "does not list it"
                raise KaldiDirError(file, f"utterance '{utt}' is listed under speaker '{spk}' but "
                                    f"{utt2spk_file.name} {said}", spk2utt[1][spk])
            listed.add(utt)
    for utt, line in utt2spk[1].items():
        if utt not in listed:
            raise KaldiDirError(utt2spk_file, f"utterance '{utt}' is missing from {file.name}", line)


def _check_audio(file: Path, wav_scp: Dict[str, str], lines: Dict[str, int], sample_rate: int) -> float:
    problems: List[Tuple[int, str]] = []
    seconds = 0.0
    for utt, entry in wav_scp.items():
        problem, duration = _audio_problem(entry, sample_rate)
        if problem:
            problems.append((lines[utt], f"'{utt}': {problem}"))
        seconds += duration
    if problems:
        line, message = problems[0]
        if len(problems) > 1:
            more = ", ".join(str(n) for n, _ in problems[1:1 + _LINES_LISTED])
            ellipsis = ", ..." if len(problems) > 1 + _LINES_LISTED else ""
            message += f" (and {len(problems) - 1} more audio problems in {file.name}, at lines {more}{ellipsis})"
        raise KaldiDirError(file, message, line)
    return seconds


def _audio_problem(entry: str, sample_rate: int) -> Tuple[Optional[str], float]:
    """Return (what is wrong or None, duration in seconds), reading only the header."""
    if entry.endswith("|"):
        return "pipe entries ('command |') are not supported: write the audio to files first", 0.0
    if _KALDI_ARK.search(entry):
        return "Kaldi ark entries are not supported: write the audio to files first", 0.0
    if not os.path.isfile(entry):
        where = "" if os.path.isabs(entry) else f" (relative paths are read from {os.getcwd()})"
        return f"audio file not found: {entry}{where}", 0.0
    try:
        info = soundfile.info(entry)
    except (RuntimeError, OSError) as e:  # libsndfile's errors are RuntimeErrors
        return f"cannot read audio {entry}: {e}", 0.0
    if info.samplerate != sample_rate:
        return f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz: {entry}", 0.0
    if info.channels != 1:
        # ESPnet's default frontend would silently train on one random channel of it.
        return f"{info.channels} channels, expected mono: {entry}", 0.0
    if info.frames <= 0:
        return f"audio has no samples: {entry}", 0.0
    return None, info.frames / info.samplerate

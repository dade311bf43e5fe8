"""Recipe stage 2: check a Kaldi data directory before anything trains on it.

Every problem of a directory is collected and reported in one DataDirProblems error, one line each, naming the
file and, where there is one, the 1-based line (`data/x/text:12: ...`), so that one run lists all there is to fix.
Read-only by design: a failed check leaves the directory and every earlier output exactly as they were.

Files must be sorted by id in C-locale byte order. ESPnet's own readers do not need it, but Kaldi's
utils/ scripts that ESPnet recipes call (fix_data_dir.sh, subset_data_dir.sh, combine_data.sh) use
`join` and `sort -c`, which drop or mis-pair entries of unsorted files without failing. Our writers always
sort, so only hand-made directories can trip this, and the fix (`LC_ALL=C sort -o f f`) is immediate.

Audio and transcript rules live beside this: audio_check.py (readable, rate, mono, not truncated) and
transcript_rules.py (characters the tokenizer can encode, minimum length, characters per second).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Tuple

from espnet_pate.data.audio_check import audio_problem
from espnet_pate.data.kaldi_dir import KaldiDir, KaldiDirError, read_table_with_lines
from espnet_pate.data.transcript_rules import (DEFAULT_CHARACTERS, DEFAULT_RULE, character_problem,
                                               length_problem, rate_problem, token_list_characters)

Table = Tuple[Dict[str, str], Dict[str, int]]
_FILE_ORDER = ("wav.scp", "text", "utt2spk", "spk2utt", "segments")


class DataDirProblems(KaldiDirError):
    """All problems found in a data directory, one per line of the message; `path` and `line` are the first's."""

    def __init__(self, directory: Path, problems: List[KaldiDirError]):
        rank = {name: i for i, name in enumerate(_FILE_ORDER)}
        self.problems = sorted(problems, key=lambda p: (rank.get(p.path.name, len(rank)), p.line or 0))
        self.directory = directory
        self.path, self.line = self.problems[0].path, self.problems[0].line
        ValueError.__init__(self, "\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class DataDirStats:
    num_utts: int
    num_speakers: int
    seconds: float

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0


def validate_data_dir(path: os.PathLike | str, sample_rate: int = 16000, require_text: bool = True,
                      token_list: Optional[os.PathLike | str] = None) -> DataDirStats:
    """Check the tables, transcripts and audio of a Kaldi data directory; raise DataDirProblems listing them all.

    Transcripts may use only the characters of `token_list` (ESPnet's tokens.txt) or, without one, the recipe's
    normalisation (transcript_rules.py). Relative audio paths are resolved from the current directory.
    """
    path = Path(path)
    allowed, rule = DEFAULT_CHARACTERS, DEFAULT_RULE
    if token_list is not None:
        allowed, rule = token_list_characters(token_list), f"not in the token list {token_list}"
    problems: List[KaldiDirError] = []
    tables = _read_tables(path, require_text, problems)
    wav_scp, text = tables["wav.scp"], tables["text"]
    if text is not None:
        _check_transcripts(path / "text", text, allowed, rule, problems)
    seconds = 0.0
    if wav_scp is not None:
        seconds = _check_audio(path / "wav.scp", wav_scp, path / "text", text, sample_rate, problems)
    if problems:
        raise DataDirProblems(path, problems)
    return DataDirStats(len(wav_scp[0]), len(set(tables["utt2spk"][0].values())), seconds)


def check_tables(path: os.PathLike | str, require_text: bool = True) -> KaldiDir:
    """The table checks of validate_data_dir, without transcript rules or audio; returns the directory's contents."""
    path = Path(path)
    problems: List[KaldiDirError] = []
    tables = _read_tables(path, require_text, problems)
    if problems:
        raise DataDirProblems(path, problems)
    text = tables["text"]
    return KaldiDir(path=path, wav_scp=tables["wav.scp"][0], utt2spk=tables["utt2spk"][0], text=text[0] if text else {})


def _read_tables(path: Path, require_text: bool, problems: List[KaldiDirError]) -> Dict[str, Optional[Table]]:
    """Read and cross-check wav.scp, utt2spk, spk2utt and text; a table that cannot be read is None."""
    if not path.is_dir():
        raise KaldiDirError(path, "not a directory")
    if (path / "segments").exists():
        problems.append(KaldiDirError(path / "segments", "segments files are not supported: cut the recordings into "
                                      "one audio file per utterance (wav.scp keyed by utterance id)"))
    tables: Dict[str, Optional[Table]] = {
        "wav.scp": _read(path / "wav.scp", problems),
        "utt2spk": _read(path / "utt2spk", problems),
        "spk2utt": _read(path / "spk2utt", problems, missing_hint="make it from utt2spk: awk '{a[$2]=a[$2]\" \"$1} "
                         "END {for (s in a) print s a[s]}' utt2spk | LC_ALL=C sort > spk2utt"),
        "text": None,
    }
    if require_text or (path / "text").exists():
        tables["text"] = _read(path / "text", problems, allow_empty_value=True,
                               missing_hint="pass --no-text for an untranscribed directory")
    wav_scp = tables["wav.scp"]
    for name in ("utt2spk", "text"):
        if wav_scp is not None and tables[name] is not None:
            _check_same_ids(path / "wav.scp", wav_scp, path / name, tables[name], problems)
    if tables["utt2spk"] is not None:
        _check_utt2spk(path / "utt2spk", tables["utt2spk"], problems)
        if tables["spk2utt"] is not None:
            _check_spk2utt(path / "spk2utt", tables["spk2utt"], path / "utt2spk", tables["utt2spk"], problems)
    return tables


def _read(file: Path, problems: List[KaldiDirError], allow_empty_value: bool = False,
          missing_hint: str = "") -> Optional[Table]:
    if not file.is_file():
        problems.append(KaldiDirError(file, "missing" + (f" ({missing_hint})" if missing_hint else "")))
        return None
    table, lines = read_table_with_lines(file, allow_empty_value, problems)
    if not table:
        problems.append(KaldiDirError(file, "has no entries"))
        return None
    previous, unsorted = b"", []
    for key in table:
        if key.startswith("\ufeff"):
            problems.append(KaldiDirError(file, "starts with a UTF-8 byte-order mark; save it without one", lines[key]))
        current = key.encode("utf-8")
        if current < previous:
            unsorted.append((key, previous.decode()))
        previous = max(previous, current)
    if unsorted:
        key, before = unsorted[0]
        more = f" ({len(unsorted)} lines out of order)" if len(unsorted) > 1 else ""
        problems.append(KaldiDirError(file, f"not sorted: '{key}' comes after '{before}'{more}; Kaldi needs files "
                                      f"sorted by id in byte order; fix with: LC_ALL=C sort -o {file} {file}",
                                      lines[key]))
    return table, lines


def _check_same_ids(ref_file: Path, ref: Table, other_file: Path, other: Table, problems: List[KaldiDirError]) -> None:
    for key, line in other[1].items():
        if key not in ref[1]:
            problems.append(KaldiDirError(other_file, f"utterance '{key}' is not in {ref_file.name}", line))
    # Ids are looked up among the lines, not the table: a bad line (reported by _read) still holds its id.
    for key, line in ref[1].items():
        if key not in other[1]:
            problems.append(KaldiDirError(ref_file, f"utterance '{key}' has no entry in {other_file.name}", line))


def _check_transcripts(file: Path, text: Table, allowed: FrozenSet[str], rule: str,
                       problems: List[KaldiDirError]) -> None:
    for utt, transcript in text[0].items():
        problem = character_problem(transcript, allowed, rule) if transcript else "empty transcript"
        if problem:
            problems.append(KaldiDirError(file, f"'{utt}': {problem}", text[1][utt]))


def _check_utt2spk(file: Path, utt2spk: Table, problems: List[KaldiDirError]) -> None:
    for utt, spk in utt2spk[0].items():
        if len(spk.split()) != 1:
            problems.append(KaldiDirError(file, f"expected 'utterance speaker', got more than one speaker for '{utt}'",
                                          utt2spk[1][utt]))


def _check_spk2utt(file: Path, spk2utt: Table, utt2spk_file: Path, utt2spk: Table,
                   problems: List[KaldiDirError]) -> None:
    listed = set()
    for spk, utts in spk2utt[0].items():
        for utt in utts.split():
            owner = utt2spk[0].get(utt)
            bad_line = owner is None and utt in utt2spk[1]  # reported as a bad line of utt2spk
            if utt in listed:
                problems.append(KaldiDirError(file, f"utterance '{utt}' is listed twice", spk2utt[1][spk]))
            elif owner != spk and not bad_line:
                said = f"gives speaker '{owner}'" if owner is not None else "does not list it"
                problems.append(KaldiDirError(file, f"utterance '{utt}' is listed under speaker '{spk}' but "
                                              f"{utt2spk_file.name} {said}", spk2utt[1][spk]))
            listed.add(utt)
    for utt, line in utt2spk[1].items():
        if utt not in listed:
            problems.append(KaldiDirError(utt2spk_file, f"utterance '{utt}' is missing from {file.name}", line))


def _check_audio(file: Path, wav_scp: Table, text_file: Path, text: Optional[Table], sample_rate: int,
                 problems: List[KaldiDirError]) -> float:
    """Check every audio file and its length against its transcript; return the total seconds of good audio."""
    total = 0.0
    for utt, entry in wav_scp[0].items():
        problem, seconds = audio_problem(entry, sample_rate)
        if problem:
            problems.append(KaldiDirError(file, f"'{utt}': {problem}", wav_scp[1][utt]))
            continue
        total += seconds
        problem = length_problem(seconds)
        if problem:
            problems.append(KaldiDirError(file, f"'{utt}': {problem}: {entry}", wav_scp[1][utt]))
            continue
        transcript = text[0].get(utt) if text is not None else None
        problem = rate_problem(transcript, seconds) if transcript else None
        if problem:
            problems.append(KaldiDirError(text_file, f"'{utt}': {problem} ({entry})", text[1][utt]))
    return total

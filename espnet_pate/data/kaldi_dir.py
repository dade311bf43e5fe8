"""Reading and writing Kaldi data directories (wav.scp, text, utt2spk, spk2utt).

Files are written sorted by key (Kaldi's `LC_ALL=C sort` order) and atomically, so a directory killed halfway
through writing never looks complete.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple


class KaldiDirError(ValueError):
    """A problem in a Kaldi data directory, naming the file and (1-based) line."""

    def __init__(self, path: os.PathLike | str, message: str, line: Optional[int] = None):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


@dataclass
class KaldiDir:
    path: Path
    wav_scp: Dict[str, str] = field(default_factory=dict)
    text: Dict[str, str] = field(default_factory=dict)
    utt2spk: Dict[str, str] = field(default_factory=dict)

    @property
    def utt_ids(self) -> List[str]:
        return sorted(self.wav_scp)

    def spk2utt(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for utt in sorted(self.utt2spk):
            out.setdefault(self.utt2spk[utt], []).append(utt)
        return out


def read_table(path: os.PathLike | str, allow_empty_value: bool = False) -> Dict[str, str]:
    """Read a `key value...` file; duplicated keys and malformed lines raise KaldiDirError with the line."""
    return read_table_with_lines(path, allow_empty_value)[0]


def read_table_with_lines(
    path: os.PathLike | str, allow_empty_value: bool = False, problems: Optional[List[KaldiDirError]] = None
) -> Tuple[Dict[str, str], Dict[str, int]]:
    """As read_table, also returning each key's 1-based line (keys stay in file order).

    With a `problems` list, a bad line (not UTF-8, no value, a duplicated id) is appended to it and skipped
    instead of raised, so that a validator can report every one: a duplicated id keeps its first line, and the
    id of another bad line is in the returned lines but not in the table (so it is not reported again as missing).
    """
    path = Path(path)

    def bad_line(key: str, error: KaldiDirError, cause: Optional[Exception] = None) -> None:
        if problems is None:
            raise error from cause
        problems.append(error)
        lines.setdefault(key, error.line)

    table: Dict[str, str] = {}
    lines: Dict[str, int] = {}
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KaldiDirError(path, f"cannot read: {e.strerror}") from e
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            key = line_bytes.split(maxsplit=1)[0].decode("utf-8", "replace")
            bad_line(key, KaldiDirError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", lineno), e)
            continue
        parts = line.rstrip("\r").split(maxsplit=1)
        key = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        if not value and not allow_empty_value:
            bad_line(key, KaldiDirError(path, f"no value for key '{key}'", lineno))
            continue
        if key in table:
            bad_line(key, KaldiDirError(path, f"duplicated id '{key}' (first on line {lines[key]})", lineno))
            continue
        table[key] = value
        lines[key] = lineno
    return table, lines


def read_kaldi_dir(path: os.PathLike | str, require_text: bool = True) -> KaldiDir:
    path = Path(path)
    if not path.is_dir():
        raise KaldiDirError(path, "not a directory")
    d = KaldiDir(path=path)
    d.wav_scp = read_table(path / "wav.scp")
    d.utt2spk = read_table(path / "utt2spk")
    if require_text or (path / "text").exists():
        d.text = read_table(path / "text", allow_empty_value=True)
    return d


def write_table(path: os.PathLike | str, items: Iterable[Tuple[str, str]]) -> None:
    """Write `key value` lines sorted by key, atomically (write to a temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for key, value in sorted(items, key=lambda kv: kv[0].encode("utf-8")):
            f.write(f"{key} {value}\n")
    os.replace(tmp, path)


def write_kaldi_dir(
    path: os.PathLike | str,
    wav_scp: Mapping[str, str],
    utt2spk: Mapping[str, str],
    text: Optional[Mapping[str, str]] = None,
) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_table(path / "wav.scp", wav_scp.items())
    write_table(path / "utt2spk", utt2spk.items())
    spk2utt: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk, key=lambda u: u.encode("utf-8")):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    write_table(path / "spk2utt", ((s, " ".join(u)) for s, u in spk2utt.items()))
    if text is not None:
        write_table(path / "text", text.items())


def subset_kaldi_dir(src: KaldiDir, dest: os.PathLike | str, utt_ids: Iterable[str]) -> None:
    ids = set(utt_ids)
    write_kaldi_dir(
        dest,
        {u: w for u, w in src.wav_scp.items() if u in ids},
        {u: s for u, s in src.utt2spk.items() if u in ids},
        {u: t for u, t in src.text.items() if u in ids} if src.text else None,
    )


def numbered_dirs(path: os.PathLike | str, prefix: str, hint: str = "") -> List[Path]:
    """``path/<prefix>0 .. <prefix>{K-1}`` in numeric order (teacher or shard directories); an error naming
    ``path`` when there are none or the numbers have a gap."""
    path = Path(path)
    found = sorted((p for p in path.glob(f"{prefix}*") if p.is_dir() and p.name[len(prefix):].isdigit()),
                   key=lambda p: int(p.name[len(prefix):]))
    if not found:
        raise FileNotFoundError(f"{path}: no {prefix}<k> directories{hint}")
    if [int(p.name[len(prefix):]) for p in found] != list(range(len(found))):
        raise FileNotFoundError(f"{path}: {prefix}<k> directories are not numbered 0..K-1: {[p.name for p in found]}")
    return found

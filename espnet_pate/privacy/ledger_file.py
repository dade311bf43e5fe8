"""The privacy ledger's file: JSON lines, each with the SHA-256 of its own content, appended under ``flock``.

Each line is written with one ``write`` and ``fsync``-ed. Bytes after the last newline (a torn tail, left by a
process killed while writing) are ignored with a warning and cut off before the next append; a complete line that
fails JSON or its checksum raises ``LedgerCorruptError``. ``exclusive()`` holds ``<ledger>.lock`` for a whole
release, re-entrant within a process (not across threads). What the lines mean: ``espnet_pate.privacy.ledger``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["LedgerCorruptError", "LedgerFile", "encode_line", "parse_line"]

log = logging.getLogger(__name__)

_HELD: Dict[str, List[int]] = {}  # lock file -> [fd, depth]: exclusive() is re-entrant within a process


class LedgerCorruptError(RuntimeError):
    """A complete ledger line is unreadable or fails its checksum: not a crash artefact, so nothing is guessed."""


def _checksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_line(obj: dict) -> bytes:
    obj = dict(obj, sha256=_checksum(obj))
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def parse_line(raw: bytes) -> Optional[dict]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("sha256") == _checksum(obj) else None


class LedgerFile:
    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def locked(self, mode: int):
        """The open file (append mode) under ``flock(mode)``."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a+b") as f:
            fcntl.flock(f.fileno(), mode)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``<ledger>.lock`` exclusively for a whole release (decode -> pending -> record -> final write)."""
        key = os.path.realpath(self.path) + ".lock"
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
            try:
                yield
            finally:
                held[1] -= 1
            return
        os.makedirs(os.path.dirname(key), exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD[key] = [fd, 1]
            try:
                yield
            finally:
                del _HELD[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read(self, f) -> Tuple[Optional[dict], List[dict], int]:
        """(header, records, length of the valid prefix in bytes); warns about a torn tail."""
        f.seek(0)
        data = f.read()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline
        parsed, good = [], 0
        for i, raw in enumerate(complete):
            obj = parse_line(raw)
            if obj is None:
                raise LedgerCorruptError(
                    f"{self.path}: line {i + 1} is a complete line that is unreadable or fails its checksum; only "
                    "bytes after the last newline can be a crash artefact. Its cost is unknown: restore the ledger "
                    "from a backup; do not edit it by hand.")
            parsed.append(obj)
            good += len(raw) + 1
        if tail:
            log.warning("%s: ignoring a torn last record (%d bytes after the last newline), left by an interrupted "
                        "write; it spent nothing and will be cut off before the next append", self.path, len(tail))
        if not parsed:
            return None, [], good
        header, records = parsed[0], parsed[1:]
        if header.get("kind") != "header":
            raise LedgerCorruptError(f"{self.path}: line 1 is not a ledger header")
        return header, records, good

    def append(self, f, obj: dict, valid_length: int) -> None:
        """Write ``obj`` as one checksummed line after the valid prefix (a torn tail is cut first), fsync-ed."""
        fd = f.fileno()
        if os.fstat(fd).st_size != valid_length:
            os.ftruncate(fd, valid_length)  # cut a torn tail, never a complete record
        data = encode_line(obj)
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)

    def create(self, f, header: dict) -> None:
        """Write the header line of a new ledger, and make the file's directory entry durable."""
        self.append(f, header, 0)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

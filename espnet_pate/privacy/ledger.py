"""The privacy ledger of one experiment: an append-only, crash-safe record of every release and its RDP cost.

Format: JSON lines. The first line is a header (format version, the order grid, the configured budget); each
further line is one release: its id, what was released, the mechanism and parameters, the number of queries,
the per-order RDP curve it spends, whether that curve is data-dependent, free-form details, and a SHA-256 of
the line's own content. Each line is written with one ``write`` and ``fsync``-ed before ``record`` returns, under
an exclusive ``flock`` so parallel jobs may share a ledger.

Crashes: a process killed while writing can leave a partial last line. It is detected (no newline, bad JSON or
bad checksum on the last line), ignored with a warning, and cut off before the next append. A bad line anywhere
else is not a crash artefact: loading fails with ``LedgerCorruptError`` rather than guess.

Idempotence: a release is keyed by its id (by default a hash of what, mechanism, parameters and inputs). Recording
an id that is already there spends nothing and returns the recorded release; recording it again with a different
cost or different outputs is refused (``ReleaseConflictError``): fresh noise on the same data is a new release.

Budget: the total spent is the sum of all recorded curves on the one grid, converted at the ledger's delta. A
release that would take the total above the configured epsilon is refused with ``BudgetExceededError`` and not
recorded.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from espnet_pate.privacy.conversion import eps_from_rdp
from espnet_pate.privacy.orders import as_orders, orders_id

__all__ = [
    "BudgetExceededError",
    "LedgerCorruptError",
    "PrivacyLedger",
    "Release",
    "ReleaseConflictError",
    "make_release_id",
]

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class BudgetExceededError(RuntimeError):
    """Recording the release would take the ledger's total above its budget; nothing was recorded."""


class LedgerCorruptError(RuntimeError):
    """A ledger line other than the last one is unreadable: not a crash artefact, so nothing is guessed."""


class ReleaseConflictError(RuntimeError):
    """A release id that is already recorded came back with a different cost or different outputs."""


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        return {"array_sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "shape": list(arr.shape),
                "dtype": arr.dtype.str}
    if isinstance(value, bytes):
        return {"bytes_sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def make_release_id(what: str, mechanism: str, params: dict, inputs: Any = None) -> str:
    """A stable id for a release: SHA-256 of its settings and inputs (arrays and bytes enter by their hash)."""
    payload = json.dumps(_canonical({"what": what, "mechanism": mechanism, "params": params, "inputs": inputs}),
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _checksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _line(obj: dict) -> bytes:
    obj = dict(obj, sha256=_checksum(obj))
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _parse(raw: bytes) -> Optional[dict]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("sha256") == _checksum(obj) else None


@dataclass(frozen=True)
class Release:
    release_id: str
    what: str
    mechanism: str
    params: dict
    queries: int
    rdp: List[float] = field(repr=False)
    data_dependent: bool
    orders_id: str
    outputs: Optional[str] = None  # e.g. the SHA-256 of the released labels file
    details: dict = field(default_factory=dict)
    time: str = ""


class PrivacyLedger:
    """``PrivacyLedger(path, eps_budget=8, delta=1e-5)``: open or create the ledger of one experiment."""

    def __init__(self, path: str, eps_budget: Optional[float] = None, delta: Optional[float] = None,
                 orders: Optional[Sequence[float]] = None, conversion: str = "improved"):
        if eps_budget is not None and delta is None:
            raise ValueError("a budget needs its delta")
        self.path, self.eps_budget, self.delta, self.conversion = path, eps_budget, delta, conversion
        self.orders = as_orders(orders)
        self.orders_id = orders_id(self.orders)
        with self._locked(fcntl.LOCK_EX) as f:
            header, _, _ = self._read(f)
            if header is None:
                self._create(f)
            elif eps_budget is not None and (header.get("eps_budget"), header.get("delta")) != (eps_budget, delta):
                log.warning("%s was created with budget eps=%s at delta=%s; now checking eps=%s at delta=%s",
                            path, header.get("eps_budget"), header.get("delta"), eps_budget, delta)
            self._load(f)  # a corrupt ledger or another order grid fails here, at open time

    # ------------------------------------------------------------------------------------------ file access
    def _locked(self, mode: int):
        ledger = self

        class _Lock:
            def __enter__(self):
                directory = os.path.dirname(os.path.abspath(ledger.path))
                os.makedirs(directory, exist_ok=True)
                self.f = open(ledger.path, "a+b")
                fcntl.flock(self.f.fileno(), mode)
                return self.f

            def __exit__(self, *exc):
                fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
                self.f.close()

        return _Lock()

    def _read(self, f) -> Tuple[Optional[dict], List[dict], int]:
        """(header, records, length of the valid prefix in bytes); warns about a torn last line."""
        f.seek(0)
        data = f.read()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline
        parsed, good = [], 0
        for i, raw in enumerate(complete):
            obj = _parse(raw)
            if obj is None:
                if i == len(complete) - 1 and not tail:
                    tail = raw  # a bad last line is treated like a torn one
                    break
                raise LedgerCorruptError(f"{self.path}: line {i + 1} is unreadable or fails its checksum; "
                                         "only the last line can be a crash artefact. Restore the ledger from a "
                                         "backup; do not edit it by hand.")
            parsed.append(obj)
            good += len(raw) + 1
        if tail:
            log.warning("%s: ignoring a torn last record (%d bytes), left by an interrupted write; it spent "
                        "nothing and will be cut off before the next append", self.path, len(tail))
        if not parsed:
            return None, [], good
        header, records = parsed[0], parsed[1:]
        if header.get("kind") != "header":
            raise LedgerCorruptError(f"{self.path}: the first line is not a ledger header")
        return header, records, good

    def _append(self, f, obj: dict, valid_length: int) -> None:
        fd = f.fileno()
        if os.fstat(fd).st_size != valid_length:
            os.ftruncate(fd, valid_length)  # cut a torn tail, never a complete record
        data = _line(obj)
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)

    def _create(self, f) -> None:
        header = {"kind": "header", "format_version": FORMAT_VERSION, "orders_id": self.orders_id,
                  "orders": self.orders.tolist(), "eps_budget": self.eps_budget, "delta": self.delta,
                  "conversion": self.conversion, "time": _now()}
        self._append(f, header, 0)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _check_header(self, header: dict) -> None:
        if header.get("format_version") != FORMAT_VERSION:
            raise LedgerCorruptError(f"{self.path}: unknown ledger format {header.get('format_version')}")
        if header.get("orders_id") != self.orders_id:
            raise ValueError(f"{self.path} accounts on order grid {header.get('orders_id')}, this process on "
                             f"{self.orders_id}: RDP curves only compose on one grid")

    def _load(self, f) -> Tuple[List[Release], int]:
        header, records, valid = self._read(f)
        if header is None:
            raise LedgerCorruptError(f"{self.path}: no header")
        self._check_header(header)
        return [Release(**{k: v for k, v in r.items() if k not in ("kind", "sha256")}) for r in records], valid

    # ------------------------------------------------------------------------------------------------ queries
    @property
    def releases(self) -> List[Release]:
        with self._locked(fcntl.LOCK_SH) as f:
            return self._load(f)[0]

    def get(self, release_id: str) -> Optional[Release]:
        return next((r for r in self.releases if r.release_id == release_id), None)

    def spent_rdp(self, releases: Optional[List[Release]] = None) -> np.ndarray:
        rel = self.releases if releases is None else releases
        total = np.zeros(self.orders.size)
        for r in rel:
            total += np.asarray(r.rdp, dtype=float)
        return total

    def spent(self, delta: Optional[float] = None, conversion: Optional[str] = None) -> Tuple[float, float]:
        """(eps, order) of everything recorded, at ``delta`` (default: the ledger's)."""
        delta = self.delta if delta is None else delta
        if delta is None:
            raise ValueError("give a delta: this ledger has none configured")
        return eps_from_rdp(self.spent_rdp(), delta, self.orders, conversion or self.conversion)

    # ------------------------------------------------------------------------------------------------ record
    def record(self, what: str, mechanism: str, params: dict, rdp: Sequence[float], queries: int, *,
               inputs: Any = None, release_id: Optional[str] = None, data_dependent: bool = True,
               outputs: Optional[str] = None, details: Optional[dict] = None) -> Tuple[Release, bool]:
        """Record one release; returns (release, spent_now). spent_now is False when the id was already there."""
        rdp = np.asarray(rdp, dtype=float)
        if rdp.shape != self.orders.shape or np.any(np.isnan(rdp)) or np.any(rdp < 0):
            raise ValueError(f"rdp must be a non-negative curve on the ledger's {self.orders.size} orders")
        rid = release_id or make_release_id(what, mechanism, params, inputs)
        new = Release(rid, what, mechanism, _canonical(params), int(queries), rdp.tolist(), bool(data_dependent),
                      self.orders_id, outputs, _canonical(details or {}), _now())
        with self._locked(fcntl.LOCK_EX) as f:
            releases, valid = self._load(f)
            old = next((r for r in releases if r.release_id == rid), None)
            if old is not None:
                self._check_same(old, new)
                return old, False
            self._check_budget(releases, new)
            self._append(f, dict(asdict(new), kind="release"), valid)
        return new, True

    def _check_same(self, old: Release, new: Release) -> None:
        if not np.allclose(old.rdp, new.rdp, rtol=1e-9, atol=0) or old.outputs != new.outputs:
            raise ReleaseConflictError(
                f"release {old.release_id} ({old.what}) is already in {self.path} with a different cost or different "
                "outputs. Re-running a noisy mechanism on the same data is a new release: reuse the recorded outputs, "
                "or record it under a new id and pay for it.")

    def _check_budget(self, releases: List[Release], new: Release) -> None:
        if self.eps_budget is None:
            return
        before = self.spent_rdp(releases)
        total_eps, order = eps_from_rdp(before + np.asarray(new.rdp), self.delta, self.orders, self.conversion)
        if total_eps <= self.eps_budget:
            return
        spent_eps, _ = eps_from_rdp(before, self.delta, self.orders, self.conversion)
        alone_eps, _ = eps_from_rdp(new.rdp, self.delta, self.orders, self.conversion)
        raise BudgetExceededError(
            f"privacy budget eps={self.eps_budget:g} at delta={self.delta:g} ({self.conversion} RDP conversion) of "
            f"{self.path} would be exceeded: {len(releases)} recorded releases have spent eps={spent_eps:.4f}; "
            f"release '{new.what}' ({new.mechanism}, {new.queries} queries, id {new.release_id}) would cost "
            f"eps={alone_eps:.4f} on its own and bring the total to eps={total_eps:.4f} (order {order:g}). "
            "Nothing was recorded.")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

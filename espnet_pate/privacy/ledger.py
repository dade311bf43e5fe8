"""The privacy ledger of one sensitive data set: an append-only, crash-safe record of every release and its cost.

One ledger per sensitive data set (the recipe's ``${expdir}/privacy_ledger.jsonl``): every release from it (PATE
labels, DP-SGD models, any published statistic) composes there, so its total is what the released set costs
together. The ledger is an operator file kept beside the sensitive data, never released: its release ids and
input digests are functions of that data.

Format: JSON lines. The first line is a header (format version, the order grid, the budget ``eps_budget`` at
``delta``, the RDP conversion); each further line is one release: its id, what was released, the mechanism and
parameters, the number of queries, the per-order RDP curve it spends, additive ``eps_extra`` and ``delta_extra``
(approximate-DP terms outside RDP, e.g. the Q*beta terms of the thresholded plurality), whether the cost is
data-dependent, free-form details, and a SHA-256 of the line's own content. A ``budget`` line records a change of
the budget (``eps_budget``, ``previous``, ``reason``, ``time``). Format 1 (before ``eps_extra`` and ``delta_extra``
existed) is still read, its releases with both at 0. Each line is written with one ``write`` and ``fsync``-ed
before ``record`` or ``set_budget`` returns, under an exclusive ``flock`` so parallel jobs may share a ledger.

The header fixes the delta, the conversion and the order grid for good: opening the ledger with others is an
error (``LedgerMismatchError``). The budget is an operator's guard, not a privacy claim (the composed total is
always reported), so it may change, but only as a recorded act: ``set_budget`` appends a budget line, never below
what is already spent. The effective budget is the last budget line's, else the header's; opening with another
budget is an error naming ``privacy_ledger init --set-budget``. Opened without them, the ledger uses its own.

Crashes: a process killed while writing can leave bytes after the last newline (a torn tail). They are ignored
with a warning and cut off before the next append. A complete line (one that ends with a newline) that fails JSON
or its checksum is not a crash artefact, the last one included: loading fails with ``LedgerCorruptError`` naming
the file and the line, rather than forget what it cost.

Idempotence: a release is keyed by its id (by default a hash of what, mechanism, parameters and inputs). Recording
an id that is already there spends nothing and returns the recorded release; recording it again with a different
cost or different outputs is refused (``ReleaseConflictError``): fresh noise on the same data is a new release.

Total and budget: the RDP curves of all releases are summed on the one grid and converted at
``delta - sum(delta_extra)``, then ``sum(eps_extra)`` is added; a total whose ``delta_extra`` sum reaches
``delta`` is refused. A release that would take the total above the effective budget is refused with
``BudgetExceededError`` and not recorded; ``check_fits`` answers the same question at plan time, before anything
is computed on sensitive data.

A whole release (decode, pending file, record, final write) runs under ``with ledger.exclusive():``, an
exclusive ``flock`` on ``<ledger>.lock``: two releasers of the same release id are serialised, so the second one
finds the first one's record and reuses its outputs. ``record`` still locks the ledger file itself, so calling it
inside ``exclusive()`` cannot deadlock; ``exclusive()`` is re-entrant within a process (not across threads).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from espnet_pate.privacy.conversion import CONVERSIONS, eps_from_rdp
from espnet_pate.privacy.digests import canonical, make_release_id
from espnet_pate.privacy.ledger_file import LedgerCorruptError, LedgerFile
from espnet_pate.privacy.orders import as_orders, orders_id

__all__ = [
    "BudgetChange",
    "BudgetExceededError",
    "LedgerCorruptError",
    "LedgerMismatchError",
    "LedgerMissingError",
    "PrivacyLedger",
    "Release",
    "ReleaseConflictError",
    "read_budget_config",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: releases without eps_extra / delta_extra (read as 0)


class BudgetExceededError(RuntimeError):
    """Recording the release would take the ledger's total above its budget; nothing was recorded."""


class LedgerMismatchError(ValueError):
    """The ledger was opened with another budget, delta, conversion or order grid than it holds."""


class LedgerMissingError(FileNotFoundError):
    """The ledger was to be opened, not created, and it does not exist."""


class ReleaseConflictError(RuntimeError):
    """A release id that is already recorded came back with a different cost or different outputs."""


def _check_extra(eps_extra: float, delta_extra: float) -> Tuple[float, float]:
    e, d = float(eps_extra), float(delta_extra)
    if not (math.isfinite(e) and e >= 0):
        raise ValueError(f"eps_extra must be finite and >= 0, got {eps_extra}")
    if not 0 <= d < 1:
        raise ValueError(f"delta_extra must be in [0, 1), got {delta_extra}")
    return e, d


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
    eps_extra: float = 0.0  # approximate-DP terms added after the RDP conversion (format 2)
    delta_extra: float = 0.0


@dataclass(frozen=True)
class BudgetChange:
    eps_budget: float
    previous: Optional[float]
    reason: str
    time: str = ""


@dataclass(frozen=True)
class Total:
    """What a set of releases costs together at the ledger's delta."""
    eps: float  # RDP conversion at (delta - delta_extra), plus eps_extra; inf when delta_extra >= delta
    order: float
    eps_rdp: float
    eps_extra: float
    delta_extra: float
    delta: float

    @property
    def valid(self) -> bool:
        return self.delta_extra < self.delta


def read_budget_config(path: str) -> Tuple[float, float]:
    """(eps_budget, delta) of a ledger from its YAML (conf/privacy.yaml); a clear error naming file and key."""
    import yaml

    with open(path, encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: expected a mapping with eps_budget and delta")
    unknown = set(conf) - {"eps_budget", "delta"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (allowed: eps_budget, delta)")
    out = []
    for key in ("eps_budget", "delta"):
        if key not in conf:
            raise ValueError(f"{path}: missing key {key}")
        try:
            out.append(float(conf[key]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {key}: cannot read {conf[key]!r} as a number") from None
    eps_budget, delta = out
    if not eps_budget > 0:
        raise ValueError(f"{path}: eps_budget must be > 0, got {eps_budget:g}")
    if not 0 < delta < 1:
        raise ValueError(f"{path}: delta must be in (0, 1), got {delta:g}")
    return eps_budget, delta


class PrivacyLedger:
    """``PrivacyLedger(path, eps_budget=8, delta=1e-5)``: open or create the ledger of one sensitive data set.

    Created with the given budget, delta, order grid and conversion (defaults: no budget, the default grid, the
    improved conversion); an existing ledger keeps its own (the budget: its effective one), and any of them given
    differently is an error. ``eps_budget`` is the effective budget as of the last read of the file.
    ``create=False`` refuses to create a missing ledger (``LedgerMissingError``).
    """

    def __init__(self, path: str, eps_budget: Optional[float] = None, delta: Optional[float] = None,
                 orders: Optional[Sequence[float]] = None, conversion: Optional[str] = None, create: bool = True):
        if eps_budget is not None and delta is None:
            raise ValueError("a budget needs its delta")
        if conversion is not None and conversion not in CONVERSIONS:
            raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
        self.path = path
        self._file = LedgerFile(path)
        self.eps_budget = None if eps_budget is None else float(eps_budget)
        self.delta = None if delta is None else float(delta)
        self.conversion = conversion or "improved"
        self.orders = as_orders(orders)
        self.orders_id = orders_id(self.orders)
        if not create and not os.path.exists(path):
            raise LedgerMissingError(f"no privacy ledger at {path}: create it first (python -m "
                                     "espnet_pate.bin.privacy_ledger init --ledger PATH --config conf/privacy.yaml)")
        self._header_budget = self.eps_budget
        self._changes: List[BudgetChange] = []
        with self._file.locked(fcntl.LOCK_EX) as f:
            header, records, _ = self._file.read(f)
            if header is None:
                if not create:
                    raise LedgerMissingError(f"{path} holds no ledger header")
                self._create(f)
            else:
                self._adopt(header, self._budget_changes(records), orders, conversion)
            self._load(f)  # a corrupt ledger fails here, at open time

    def _adopt(self, header: dict, changes: List[BudgetChange], orders, conversion: Optional[str]) -> None:
        """Take the header's delta, conversion and grid and the effective budget; refuse others given by the caller."""
        if header.get("format_version") not in READABLE_VERSIONS:
            raise LedgerCorruptError(f"{self.path}: unknown ledger format {header.get('format_version')} "
                                     f"(this code reads {READABLE_VERSIONS})")
        fixed = (header.get("eps_budget"), header.get("delta"))
        effective = changes[-1].eps_budget if changes else fixed[0]
        wrong_delta = self.delta is not None and fixed[1] is not None and self.delta != fixed[1]
        if wrong_delta or (self.eps_budget is not None and self.eps_budget != effective):
            now = f", its budget changed since to eps={_g(effective)}" if changes else ""
            asked = (f"{self.path} was created with budget eps={_g(fixed[0])} at delta={_g(fixed[1])}{now}; this run "
                     f"asks for eps={_g(self.eps_budget)} at delta={_g(self.delta)}.")
            if wrong_delta or fixed[1] is None:
                raise LedgerMismatchError(f"{asked} The delta of the sensitive data set is fixed for good: use the "
                                          "same one, or a new ledger for new data.")
            raise LedgerMismatchError(
                f"{asked} Use the same budget, or change it as a recorded act: python -m "
                f"espnet_pate.bin.privacy_ledger init --ledger {self.path} --config CONFIG --set-budget (CONFIG: "
                "the YAML with the new eps_budget).")
        if conversion is not None and conversion != header.get("conversion"):
            raise LedgerMismatchError(f"{self.path} converts RDP with the {header.get('conversion')} conversion, "
                                      f"this run asks for {conversion}")
        if orders is not None and header.get("orders_id") != self.orders_id:
            raise LedgerMismatchError(f"{self.path} accounts on order grid {header.get('orders_id')}, this process "
                                      f"on {self.orders_id}: RDP curves only compose on one grid")
        self._header_budget = None if fixed[0] is None else float(fixed[0])
        self.eps_budget = self._header_budget
        if fixed[1] is not None or self.delta is None:
            self.delta = None if fixed[1] is None else float(fixed[1])
        self.conversion = header.get("conversion", "improved")
        self.orders = as_orders(header["orders"])
        self.orders_id = orders_id(self.orders)
        if self.orders_id != header.get("orders_id"):
            raise LedgerCorruptError(f"{self.path}: the header's orders do not match its orders_id")

    def _create(self, f) -> None:
        header = {"kind": "header", "format_version": FORMAT_VERSION, "orders_id": self.orders_id,
                  "orders": self.orders.tolist(), "eps_budget": self.eps_budget, "delta": self.delta,
                  "conversion": self.conversion, "time": _now()}
        self._file.create(f, header)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator["PrivacyLedger"]:
        """Hold ``<ledger>.lock`` exclusively for a whole release (decode -> pending -> record -> final write)."""
        with self._file.exclusive():
            yield self

    def _load(self, f) -> Tuple[List[Release], int]:
        """(releases, valid length); refreshes the effective budget and its changes from the file."""
        header, records, valid = self._file.read(f)
        if header is None:
            raise LedgerCorruptError(f"{self.path}: no header")
        if header.get("format_version") not in READABLE_VERSIONS:
            raise LedgerCorruptError(f"{self.path}: unknown ledger format {header.get('format_version')}")
        releases = []
        for i, r in enumerate(records):
            if r.get("kind") == "budget":
                continue
            try:
                releases.append(Release(**{k: v for k, v in r.items() if k not in ("kind", "sha256")}))
            except TypeError as err:
                raise LedgerCorruptError(f"{self.path}: line {i + 2} is not a release of format "
                                         f"{header.get('format_version')}: {err}") from None
        self._changes = self._budget_changes(records)
        self.eps_budget = self._changes[-1].eps_budget if self._changes else self._header_budget
        return releases, valid

    def _budget_changes(self, records: List[dict]) -> List[BudgetChange]:
        changes = []
        for i, r in enumerate(records):
            if r.get("kind") != "budget":
                continue
            try:
                change = BudgetChange(**{k: v for k, v in r.items() if k not in ("kind", "sha256")})
            except TypeError as err:
                raise LedgerCorruptError(f"{self.path}: line {i + 2} is not a budget change: {err}") from None
            if not _positive(change.eps_budget):
                raise LedgerCorruptError(f"{self.path}: line {i + 2} sets the budget to {change.eps_budget!r}")
            changes.append(change)
        return changes

    # ------------------------------------------------------------------------------------------------ queries
    @property
    def releases(self) -> List[Release]:
        with self._file.locked(fcntl.LOCK_SH) as f:
            return self._load(f)[0]

    @property
    def budget_changes(self) -> List[BudgetChange]:
        with self._file.locked(fcntl.LOCK_SH) as f:
            self._load(f)
            return list(self._changes)

    def get(self, release_id: str) -> Optional[Release]:
        return next((r for r in self.releases if r.release_id == release_id), None)

    def spent_rdp(self, releases: Optional[List[Release]] = None) -> np.ndarray:
        rel = self.releases if releases is None else releases
        total = np.zeros(self.orders.size)
        for r in rel:
            total += np.asarray(r.rdp, dtype=float)
        return total

    def total(self, releases: Optional[List[Release]] = None, delta: Optional[float] = None,
              conversion: Optional[str] = None) -> Total:
        """The composed cost of ``releases`` (default: all recorded) at ``delta`` (default: the ledger's)."""
        rel = self.releases if releases is None else releases
        delta = self.delta if delta is None else float(delta)
        if delta is None:
            raise ValueError(f"give a delta: {self.path} has none configured")
        eps_x = math.fsum(r.eps_extra for r in rel)
        delta_x = math.fsum(r.delta_extra for r in rel)
        if delta_x >= delta:
            return Total(math.inf, math.nan, math.inf, eps_x, delta_x, delta)
        eps, order = eps_from_rdp(self.spent_rdp(rel), delta - delta_x, self.orders, conversion or self.conversion)
        return Total(eps + eps_x, order, eps, eps_x, delta_x, delta)

    def spent(self, delta: Optional[float] = None, conversion: Optional[str] = None) -> Tuple[float, float]:
        """(eps, order) of everything recorded, at ``delta`` (default: the ledger's); refused when the recorded
        ``delta_extra`` already reach ``delta``."""
        t = self.total(delta=delta, conversion=conversion)
        if not t.valid:
            raise ValueError(f"{self.path}: the recorded delta_extra sum to {t.delta_extra:g} >= delta {t.delta:g}: "
                             "no epsilon holds at that delta")
        return t.eps, t.order

    def check_fits(self, rdp: Sequence[float], eps_extra: float = 0.0, delta_extra: float = 0.0
                   ) -> Tuple[bool, float]:
        """(fits, total eps) if a release of this cost were added now; fits is True when there is no budget."""
        candidate = self._candidate(rdp, eps_extra, delta_extra)
        t = self.total(self.releases + [candidate])
        return (self.eps_budget is None or (t.valid and t.eps <= self.eps_budget)), t.eps

    def summary(self) -> dict:
        """The ledger's claim as a JSON-able dict: budget (and its recorded changes), releases, the composed total."""
        rel = self.releases
        out = {"ledger": os.path.abspath(self.path), "eps_budget": self.eps_budget, "delta": self.delta,
               "conversion": self.conversion, "orders_id": self.orders_id, "releases": len(rel),
               "data_dependent": any(r.data_dependent for r in rel),
               "budget_changes": [{"eps_budget": c.eps_budget, "previous": c.previous, "reason": c.reason,
                                   "time": c.time} for c in self._changes]}
        if self.delta is not None:
            t = self.total(rel)
            out.update(eps=t.eps, order=t.order, eps_rdp=t.eps_rdp, eps_extra=t.eps_extra, delta_extra=t.delta_extra)
        return out

    # ------------------------------------------------------------------------------------------------ record
    def _candidate(self, rdp, eps_extra, delta_extra, **kw) -> Release:
        rdp = np.asarray(rdp, dtype=float)
        if rdp.shape != self.orders.shape or np.any(np.isnan(rdp)) or np.any(rdp < 0):
            raise ValueError(f"rdp must be a non-negative curve on the ledger's {self.orders.size} orders")
        eps_extra, delta_extra = _check_extra(eps_extra, delta_extra)
        fields = dict(release_id="(candidate)", what="(candidate)", mechanism="", params={}, queries=0,
                      data_dependent=True, orders_id=self.orders_id)
        fields.update(kw)
        return Release(rdp=rdp.tolist(), eps_extra=eps_extra, delta_extra=delta_extra, **fields)

    def record(self, what: str, mechanism: str, params: dict, rdp: Sequence[float], queries: int, *,
               inputs: Any = None, release_id: Optional[str] = None, data_dependent: bool = True,
               outputs: Optional[str] = None, details: Optional[dict] = None, eps_extra: float = 0.0,
               delta_extra: float = 0.0) -> Tuple[Release, bool]:
        """Record one release; returns (release, spent_now). spent_now is False when the id was already there."""
        rid = release_id or make_release_id(what, mechanism, params, inputs)
        new = self._candidate(rdp, eps_extra, delta_extra, release_id=rid, what=what, mechanism=mechanism,
                              params=canonical(params), queries=int(queries), data_dependent=bool(data_dependent),
                              outputs=outputs, details=canonical(details or {}), time=_now())
        with self._file.locked(fcntl.LOCK_EX) as f:
            releases, valid = self._load(f)
            old = next((r for r in releases if r.release_id == rid), None)
            if old is not None:
                self._check_same(old, new)
                return old, False
            self._check_budget(releases, new)
            self._file.append(f, dict(asdict(new), kind="release"), valid)
        return new, True

    def set_budget(self, eps_budget: float, reason: str) -> Optional[BudgetChange]:
        """Record a new budget; None (nothing written) when it is the effective one already. Never below what the
        recorded releases have spent (ValueError)."""
        new = float(eps_budget)
        if not _positive(new):
            raise ValueError(f"eps_budget must be finite and > 0, got {eps_budget}")
        if not str(reason).strip():
            raise ValueError("a budget change needs a reason")
        if self.delta is None:
            raise ValueError(f"{self.path} has no delta: a budget needs one")
        with self._file.locked(fcntl.LOCK_EX) as f:
            releases, valid = self._load(f)
            if self.eps_budget == new:
                return None
            spent = self.total(releases)
            if not (spent.valid and spent.eps <= new):
                raise ValueError(
                    f"{self.path}: budget eps={new:g} is below what {len(releases)} recorded releases have already "
                    f"spent, eps={spent.eps:.4f} at delta={self.delta:g}; the effective budget stays "
                    f"eps={_g(self.eps_budget)}")
            change = BudgetChange(new, self.eps_budget, str(reason), _now())
            self._file.append(f, dict(asdict(change), kind="budget"), valid)
            self._changes.append(change)
            self.eps_budget = new
        return change

    def _check_same(self, old: Release, new: Release) -> None:
        if not np.allclose(old.rdp, new.rdp, rtol=1e-9, atol=0) or old.outputs != new.outputs or \
                not math.isclose(old.eps_extra, new.eps_extra, rel_tol=1e-9) or \
                not math.isclose(old.delta_extra, new.delta_extra, rel_tol=1e-9):
            raise ReleaseConflictError(
                f"release {old.release_id} ({old.what}) is already in {self.path} with a different cost or different "
                "outputs. Re-running a noisy mechanism on the same data is a new release: reuse the recorded outputs, "
                "or record it under a new id and pay for it.")

    def _check_budget(self, releases: List[Release], new: Release) -> None:
        if self.eps_budget is None:
            return
        t = self.total(releases + [new])
        if t.valid and t.eps <= self.eps_budget:
            return
        before = self.total(releases)
        alone = self.total([new])
        if not t.valid:
            cause = (f"its delta_extra {new.delta_extra:g} would bring the additive deltas to {t.delta_extra:g}, "
                     f"not below the ledger's delta {self.delta:g}")
        else:
            cause = (f"it would cost eps={alone.eps:.4f} on its own and bring the total to eps={t.eps:.4f} "
                     f"(order {t.order:g})")
        raise BudgetExceededError(
            f"privacy budget eps={self.eps_budget:g} at delta={self.delta:g} ({self.conversion} RDP conversion) of "
            f"{self.path} would be exceeded: {len(releases)} recorded releases have spent eps={before.eps:.4f}; "
            f"release '{new.what}' ({new.mechanism}, {new.queries} queries, id {new.release_id}): {cause}. "
            "Nothing was recorded.")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _g(x) -> str:
    return "none" if x is None else f"{x:g}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

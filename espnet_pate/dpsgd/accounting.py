"""Privacy accounting for DP-SGD: Poisson-subsampled Gaussian mechanism composed over steps.

Everything here is a thin, tested layer over ``dp_accounting`` (see ../shared/PRIVACY.md, "DP-SGD"):

* ``compute_epsilon(q, sigma, steps, delta, accountant)``: epsilon (an upper bound) of ``steps`` steps of the
  Poisson-subsampled Gaussian mechanism with sampling rate ``q`` and noise multiplier ``sigma``
  (noise std = sigma * clipping norm), under add/remove-one neighbouring.
  ``accountant='rdp'``: dp_accounting's RdpAccountant with its default orders and its improved RDP->(eps, delta)
  conversion; ``accountant='pld'``: dp_accounting's PLDAccountant (pessimistic discretisation, default interval).
* ``calibrate_noise(target_eps, q, steps, delta, accountant)``: the smallest noise multiplier (within ``tol``)
  whose epsilon is <= target, found with ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism``.
  The returned epsilon is recomputed and never above the target.
* ``rdp_curve(segments, orders)``: the RDP curve of the steps on a given order grid (dp_accounting's RdpAccountant
  with those orders), so that a DP-SGD model composes with other releases in the privacy ledger.
* ``DpSgdAccountant``: a stateful ledger of the steps actually taken, as run-length segments
  ``(sample_rate, noise_multiplier, steps)``; ``state_dict()``/``load_state_dict()`` round-trip through plain
  JSON-able dicts so the ledger is saved with a training checkpoint and restored on resume.

The privacy unit is whatever is Poisson-sampled at rate q (an utterance, or a speaker when speakers are sampled
and each speaker's summed gradient is clipped); the figures are data-independent.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import dp_accounting
import numpy as np
from dp_accounting import mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

ACCOUNTANTS = ("rdp", "pld")
MECHANISM = "poisson_subsampled_gaussian"
NEIGHBORING_RELATION = "add_or_remove_one"
STATE_VERSION = 1

__all__ = [
    "ACCOUNTANTS",
    "DpSgdAccountant",
    "calibrate_noise",
    "compute_epsilon",
    "compute_epsilon_details",
    "make_dp_event",
    "rdp_curve",
]


# ----------------------------------------------------------------------------------------------- validation
def _check_rate(sample_rate: float) -> float:
    q = float(sample_rate)
    if not (0.0 < q <= 1.0) or math.isnan(q):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    return q


def _check_sigma(noise_multiplier: float) -> float:
    s = float(noise_multiplier)
    if not s >= 0.0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    return s


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    return int(steps)


def _check_delta(delta: float) -> float:
    d = float(delta)
    if not (0.0 < d < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return d


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return accountant


# ------------------------------------------------------------------------------------------------ events
def make_dp_event(segments: Iterable[Tuple[float, float, int]]) -> dp_accounting.DpEvent:
    """DpEvent for a sequence of ``(sample_rate, noise_multiplier, steps)`` segments, composed in order."""
    events = []
    for q, sigma, n in segments:
        q, sigma, n = _check_rate(q), _check_sigma(sigma), _check_steps(n)
        if n == 0:
            continue
        if sigma == 0.0:
            step = dp_accounting.NonPrivateDpEvent()
        else:
            step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        events.append(dp_accounting.SelfComposedDpEvent(step, n))
    if not events:
        return dp_accounting.NoOpDpEvent()
    if len(events) == 1:
        return events[0]
    return dp_accounting.ComposedDpEvent(events)


def _fresh(accountant: str) -> dp_accounting.PrivacyAccountant:
    if accountant == "rdp":
        return rdp_privacy_accountant.RdpAccountant()  # default orders, add/remove-one
    return pld_privacy_accountant.PLDAccountant()  # default discretisation, add/remove-one


def _classic_rdp_epsilon(acc: rdp_privacy_accountant.RdpAccountant, delta: float) -> Tuple[float, float]:
    """Classic conversion eps = min_l RDP(l) + log(1/delta)/(l-1) (reported beside the improved one)."""
    best, best_order = math.inf, float("nan")
    for order, r in zip(acc.orders, acc.rdp):
        if order <= 1:
            continue
        eps = float(r) + math.log(1.0 / delta) / (float(order) - 1.0)
        if eps < best:
            best, best_order = eps, float(order)
    return best, best_order


def _epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str) -> Dict[str, float]:
    acc = _fresh(accountant)
    acc.compose(event)
    if accountant == "rdp":
        eps, order = acc.get_epsilon_and_optimal_order(delta)
        classic, classic_order = _classic_rdp_epsilon(acc, delta)
        return {
            "eps": float(eps),
            "rdp_order": float(order),
            "eps_classic_conversion": float(classic),
            "rdp_order_classic": float(classic_order),
        }
    return {"eps": float(acc.get_epsilon(delta))}


def _describe(accountant: str, delta: float) -> Dict[str, object]:
    return {
        "mechanism": MECHANISM,
        "neighboring_relation": NEIGHBORING_RELATION,
        "privacy_unit": "the record Poisson-sampled at sample_rate (utterance, or speaker when speakers are sampled)",
        "accountant": (
            "rdp (dp_accounting RdpAccountant, default orders, improved conversion)"
            if accountant == "rdp"
            else "pld (dp_accounting PLDAccountant, pessimistic, discretisation 1e-4)"
        ),
        "delta": delta,
        "data_dependent": False,
        "dp_accounting_version": getattr(dp_accounting, "__version__", None) or _dist_version("dp-accounting"),
    }


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - metadata missing
        return None


# ------------------------------------------------------------------------------------------- public API
def compute_epsilon_details(
    sample_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "rdp"
) -> Dict[str, object]:
    """Epsilon with its description (mechanism, unit, accountant, delta, order for RDP) as a JSON-able dict."""
    accountant = _check_accountant(accountant)
    q, sigma, n, delta = (_check_rate(sample_rate), _check_sigma(noise_multiplier), _check_steps(steps),
                          _check_delta(delta))
    out: Dict[str, object] = {"sample_rate": q, "noise_multiplier": sigma, "steps": n}
    out.update(_epsilon_of_event(make_dp_event([(q, sigma, n)]), delta, accountant))
    out.update(_describe(accountant, delta))
    return out


def compute_epsilon(
    sample_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon (upper bound) of ``steps`` Poisson-subsampled Gaussian steps at ``delta``."""
    return float(compute_epsilon_details(sample_rate, noise_multiplier, steps, delta, accountant)["eps"])


def calibrate_noise(
    target_eps: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    tol: float = 1e-4,
) -> Tuple[float, float]:
    """Smallest noise multiplier (within ``tol``) whose epsilon is <= ``target_eps``.

    Returns ``(noise_multiplier, eps)``; ``eps`` is recomputed with a fresh accountant and is never above the
    target (the result is nudged upwards by ``tol`` until it is, which dp_accounting already guarantees).
    """
    accountant = _check_accountant(accountant)
    q, n, delta = _check_rate(sample_rate), _check_steps(steps), _check_delta(delta)
    target = float(target_eps)
    if not target > 0:
        raise ValueError(f"target_eps must be > 0, got {target_eps}")
    if n == 0:
        return 0.0, 0.0

    def eps_of(sigma: float) -> float:
        return _epsilon_of_event(make_dp_event([(q, sigma, n)]), delta, accountant)["eps"]

    # Explicit bracket [lo, hi] with eps(lo) > target >= eps(hi); epsilon decreases with sigma.
    # PLD is slow for small sigma, so it starts from the (cheap) RDP calibration: RDP's figure is the looser
    # bound, so its sigma is usually already on the safe side of the PLD target.
    if accountant == "pld":
        hi = calibrate_noise(target, q, n, delta, accountant="rdp", tol=1e-3)[0]
        lo = 0.8 * hi
    else:
        lo, hi = 0.5, 1.0
    while eps_of(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi > 2.0**30:
            raise ValueError("no noise multiplier below 2**30 reaches the target epsilon")
    while eps_of(lo) <= target:
        hi, lo = lo, lo * (0.8 if accountant == "pld" else 0.5)
        if lo < 1e-6:
            return hi, eps_of(hi)  # target so loose that (almost) no noise is needed

    sigma = mechanism_calibration.calibrate_dp_mechanism(
        make_fresh_accountant=lambda: _fresh(accountant),
        make_event_from_param=lambda s: make_dp_event([(q, s, n)]),
        target_epsilon=target,
        target_delta=delta,
        bracket_interval=mechanism_calibration.ExplicitBracketInterval(lo, hi),
        tol=tol,
    )
    sigma = float(sigma)
    eps = eps_of(sigma)
    while eps > target:  # belt and braces: never report a figure above the target
        sigma += tol
        eps = eps_of(sigma)
    return sigma, eps


def rdp_curve(segments: Iterable[Tuple[float, float, int]], orders: Sequence[float]) -> np.ndarray:
    """RDP of the composed ``(sample_rate, noise_multiplier, steps)`` segments at each of ``orders`` (add/remove-one).

    dp_accounting sets an order it cannot bound (a fractional order at a large sampling rate) to infinity: that
    order is then simply unusable in the conversion, never an underestimate.
    """
    acc = rdp_privacy_accountant.RdpAccountant(orders=[float(o) for o in orders])
    acc.compose(make_dp_event(segments))
    return np.asarray(acc.rdp, dtype=float)


# ------------------------------------------------------------------------------------- stateful ledger
class DpSgdAccountant:
    """Ledger of DP-SGD steps taken, for checkpointing with the model.

    >>> acc = DpSgdAccountant(delta=1e-5)
    >>> acc.step(sample_rate=0.01, noise_multiplier=1.1, n=100)
    >>> state = acc.state_dict()            # save with the checkpoint (JSON-able)
    >>> acc2 = DpSgdAccountant.from_state_dict(state)
    >>> acc2.get_epsilon() == acc.get_epsilon()
    True
    """

    def __init__(self, delta: Optional[float] = None, accountant: str = "rdp"):
        self.delta = None if delta is None else _check_delta(delta)
        self.accountant = _check_accountant(accountant)
        self._segments: List[List[float]] = []  # [sample_rate, noise_multiplier, steps], run-length encoded

    # --------------------------------------------------------------------------------------- updates
    def step(self, sample_rate: float, noise_multiplier: float, n: int = 1) -> None:
        """Record ``n`` steps at sampling rate ``sample_rate`` with noise multiplier ``noise_multiplier``."""
        q, sigma, n = _check_rate(sample_rate), _check_sigma(noise_multiplier), _check_steps(n)
        if n == 0:
            return
        if self._segments and self._segments[-1][0] == q and self._segments[-1][1] == sigma:
            self._segments[-1][2] += n
        else:
            self._segments.append([q, sigma, n])

    @property
    def steps(self) -> int:
        return int(sum(seg[2] for seg in self._segments))

    @property
    def segments(self) -> List[Tuple[float, float, int]]:
        return [(float(q), float(s), int(n)) for q, s, n in self._segments]

    # ------------------------------------------------------------------------------------------ query
    def _resolve(self, delta: Optional[float], accountant: Optional[str]) -> Tuple[float, str]:
        d = self.delta if delta is None else delta
        if d is None:
            raise ValueError("delta not given here nor at construction")
        return _check_delta(d), _check_accountant(accountant or self.accountant)

    def get_epsilon_details(self, delta: Optional[float] = None, accountant: Optional[str] = None) -> Dict:
        d, a = self._resolve(delta, accountant)
        out: Dict[str, object] = {"steps": self.steps, "segments": self.segments}
        out.update(_epsilon_of_event(make_dp_event(self.segments), d, a))
        out.update(_describe(a, d))
        return out

    def get_epsilon(self, delta: Optional[float] = None, accountant: Optional[str] = None) -> float:
        return float(self.get_epsilon_details(delta, accountant)["eps"])

    # -------------------------------------------------------------------------------- serialisation
    def state_dict(self) -> Dict[str, object]:
        return {
            "version": STATE_VERSION,
            "mechanism": MECHANISM,
            "neighboring_relation": NEIGHBORING_RELATION,
            "delta": self.delta,
            "accountant": self.accountant,
            "segments": [[float(q), float(s), int(n)] for q, s, n in self._segments],
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ValueError(f"unsupported accountant state version {state.get('version')}")
        if state.get("mechanism") != MECHANISM or state.get("neighboring_relation") != NEIGHBORING_RELATION:
            raise ValueError("accountant state is for a different mechanism or neighbouring relation")
        delta = state.get("delta")
        self.delta = None if delta is None else _check_delta(delta)
        self.accountant = _check_accountant(str(state.get("accountant", "rdp")))
        segments: List[List[float]] = []
        for q, s, n in state["segments"]:  # type: ignore[index]
            segments.append([_check_rate(q), _check_sigma(s), _check_steps(n)])
        self._segments = segments

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> "DpSgdAccountant":
        acc = cls()
        acc.load_state_dict(state)
        return acc

    def __repr__(self) -> str:
        return f"DpSgdAccountant(delta={self.delta}, accountant={self.accountant!r}, segments={self.segments})"

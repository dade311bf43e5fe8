"""PATE vote aggregators: LNMax, GNMax, Confident-GNMax, Interactive-GNMax (PRIVACY.md, "PATE vote aggregation").

Each aggregator takes histograms [..., classes] (one row per query, hard or soft votes; a single [classes]
histogram is one query) and returns an ``Aggregation(labels, answered)`` over the query axes. Refused queries
have label ``REFUSED`` (-1).

* LNMax (Papernot et al. 2017): argmax(n + Lap(b)^m), pure (2/b)-DP per query.
* GNMax (Papernot et al. 2018, Alg. 1): argmax(n + N(0, sigma^2 I)).
* Confident-GNMax (2018, Alg. 1): answer only if max(n) + N(0, sigma1^2) >= T, then with GNMax(sigma2).
* Interactive-GNMax (2018, Alg. 2): the threshold applies to max(n - M p_student) (M teachers); the answer still
  uses the raw votes. The student's own confident predictions, which the paper also keeps, cost nothing and are
  the caller's business.

Ties of the noisy scores go to the lowest index (``np.argmax``); with continuous noise they have probability 0.
Noise: a numpy Generator seeded from the operating system, unless a seed is given; ``seed_fixed`` (also in
``describe()``) then marks the run as reproducible and not for release. The OS entropy is never recorded: whoever
knows it can subtract the noise.

Budget: pass a ``PrivacyBudget`` to stop answering once it is spent (see budget.py); the per-query costs are the
data-dependent and data-independent RDP curves on the budget's order grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from espnet_pate.privacy.budget import PrivacyBudget
from espnet_pate.privacy.rdp_gnmax import (
    log_pr_answered,
    rdp_gnmax,
    rdp_gnmax_data_independent,
    rdp_threshold,
    rdp_threshold_data_independent,
)
from espnet_pate.privacy.rdp_lnmax import rdp_lnmax, rdp_lnmax_data_independent
from espnet_pate.privacy.votes import as_histograms

__all__ = ["REFUSED", "Aggregation", "ConfidentGNMax", "GNMax", "InteractiveGNMax", "LNMax"]

REFUSED = -1


class Aggregation(NamedTuple):
    labels: np.ndarray  # int64 over the query axes; REFUSED where not answered
    answered: np.ndarray  # bool over the query axes


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


class _Aggregator:
    mechanism = ""

    def __init__(self, seed: Optional[int] = None, rng: Optional[np.random.Generator] = None):
        if rng is not None and seed is not None:
            raise ValueError("give a seed or a generator, not both")
        self.seed = seed
        # A generator handed in from outside may have been seeded by anyone: treat it as fixed.
        self.seed_fixed = seed is not None or rng is not None
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def params(self) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"mechanism": self.mechanism, "params": self.params(), "seed": self.seed,
                "seed_fixed": self.seed_fixed, "not_for_release": self.seed_fixed}

    def _budgeted(self, result: Aggregation, budget: Optional[PrivacyBudget], worst_dd, realized_dd, worst_di,
                  realized_di) -> Aggregation:
        if budget is None:
            return result
        labels, answered = result.labels.reshape(-1), result.answered.reshape(-1)
        k = budget.admit(worst_dd, realized_dd, worst_di, realized_di)
        labels[k:], answered[k:] = REFUSED, False
        return Aggregation(labels.reshape(result.labels.shape), answered.reshape(result.answered.shape))


class _NoisyMax(_Aggregator):
    def _noise(self, shape) -> np.ndarray:
        raise NotImplementedError

    def _rdp(self, flat_votes, orders):
        raise NotImplementedError

    def noisy_argmax(self, votes) -> np.ndarray:
        n = np.asarray(votes, dtype=float)
        return np.argmax(n + self._noise(n.shape), axis=-1)

    def __call__(self, votes, budget: Optional[PrivacyBudget] = None) -> Aggregation:
        n = np.asarray(votes, dtype=float)
        as_histograms(n)  # validation
        labels = np.asarray(self.noisy_argmax(n), dtype=np.int64)
        result = Aggregation(labels, np.ones(labels.shape, dtype=bool))
        if budget is None:
            return result
        flat = n.reshape(-1, n.shape[-1])
        dd, di = self._rdp(flat, budget.orders)
        di = np.broadcast_to(di, dd.shape)
        return self._budgeted(result, budget, dd, dd, di, di)


class GNMax(_NoisyMax):
    """argmax(n + N(0, sigma^2)) per query."""

    mechanism = "gnmax"

    def __init__(self, sigma: float, seed: Optional[int] = None, rng: Optional[np.random.Generator] = None):
        super().__init__(seed, rng)
        self.sigma = _positive(sigma, "sigma")

    def params(self) -> dict:
        return {"sigma": self.sigma}

    def _noise(self, shape):
        return self.rng.normal(0.0, self.sigma, size=shape)

    def _rdp(self, flat_votes, orders):
        return rdp_gnmax(flat_votes, self.sigma, orders), rdp_gnmax_data_independent(self.sigma, orders)


class LNMax(_NoisyMax):
    """argmax(n + Lap(b)) per query, b = 1/gamma."""

    mechanism = "lnmax"

    def __init__(self, laplace_scale: float, seed: Optional[int] = None, rng: Optional[np.random.Generator] = None):
        super().__init__(seed, rng)
        self.laplace_scale = _positive(laplace_scale, "laplace_scale")

    def params(self) -> dict:
        return {"laplace_scale": self.laplace_scale}

    def _noise(self, shape):
        return self.rng.laplace(0.0, self.laplace_scale, size=shape)

    def _rdp(self, flat_votes, orders):
        return rdp_lnmax(flat_votes, self.laplace_scale, orders), rdp_lnmax_data_independent(self.laplace_scale, orders)


class ConfidentGNMax(_Aggregator):
    """Answer only if max(n) + N(0, sigma1^2) >= threshold; then GNMax(sigma2) on the same votes."""

    mechanism = "confident_gnmax"

    def __init__(self, sigma1: float, threshold: float, sigma2: float, seed: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None):
        super().__init__(seed, rng)
        self.sigma1 = _positive(sigma1, "sigma1")
        self.threshold = float(threshold)
        self.sigma2 = _positive(sigma2, "sigma2")
        self._gnmax = GNMax(self.sigma2, rng=self.rng)

    def params(self) -> dict:
        return {"sigma1": self.sigma1, "threshold": self.threshold, "sigma2": self.sigma2}

    def passes_threshold(self, screen) -> np.ndarray:
        """The threshold step on its input (max(n), or max(n - M p) for the interactive variant)."""
        screen = np.asarray(screen, dtype=float)
        # One draw per query, all drawn before the answers: with a fixed seed the answered set does not depend
        # on how many queries pass.
        return screen.max(axis=-1) + self.rng.normal(0.0, self.sigma1, size=screen.shape[:-1]) >= self.threshold

    def _run(self, votes, screen, budget: Optional[PrivacyBudget]) -> Aggregation:
        n = np.asarray(votes, dtype=float)
        as_histograms(n)
        answered = np.asarray(self.passes_threshold(screen))
        labels = np.where(answered, self._gnmax.noisy_argmax(n), REFUSED).astype(np.int64)
        result = Aggregation(labels, answered)
        if budget is None:
            return result
        flat, flat_screen = n.reshape(-1, n.shape[-1]), np.asarray(screen, float).reshape(-1, n.shape[-1])
        orders = budget.orders
        step1 = rdp_threshold(log_pr_answered(flat_screen, self.threshold, self.sigma1), self.sigma1, orders)
        step2 = rdp_gnmax(flat, self.sigma2, orders)
        step1_di = np.broadcast_to(rdp_threshold_data_independent(self.sigma1, orders), step1.shape)
        step2_di = np.broadcast_to(rdp_gnmax_data_independent(self.sigma2, orders), step2.shape)
        mask = answered.reshape(-1, 1)
        return self._budgeted(result, budget, step1 + step2, step1 + mask * step2, step1_di + step2_di,
                              step1_di + mask * step2_di)

    def __call__(self, votes, budget: Optional[PrivacyBudget] = None) -> Aggregation:
        return self._run(votes, votes, budget)


class InteractiveGNMax(ConfidentGNMax):
    """Threshold on max(n - M p_student); answer with GNMax(sigma2) on the raw votes n."""

    mechanism = "interactive_gnmax"

    def __call__(self, votes, student_probs=None, budget: Optional[PrivacyBudget] = None,
                 num_teachers: Optional[float] = None) -> Aggregation:
        """``student_probs``: [..., classes] distributions; M defaults to each histogram's total (K teachers)."""
        if student_probs is None:
            raise ValueError("Interactive-GNMax needs the student's probabilities")
        n = np.asarray(votes, dtype=float)
        p = np.broadcast_to(np.asarray(student_probs, dtype=float), n.shape)
        m = n.sum(axis=-1, keepdims=True) if num_teachers is None else float(num_teachers)
        return self._run(n, n - m * p, budget)

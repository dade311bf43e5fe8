"""RDP of GNMax and of the Confident-GNMax threshold step (Papernot et al. 2018, "Scalable Private Learning
with PATE"), data-independent and data-dependent.

Data-independent (Prop. 8): GNMax adds N(0, sigma^2) to a histogram of L2 sensitivity sqrt(2), so it is the
Gaussian mechanism with noise multiplier sigma/sqrt(2): RDP(l) = l / sigma^2. The threshold step looks at
max(n), of sensitivity 1: RDP(l) = l / (2 sigma1^2). Both curves come from dp_accounting's RdpAccountant.

Data-dependent (Prop. 7, Theorem 6, Prop. 10; PRIVACY.md): with q an upper bound on P[answer != i*],

    q <= min( sum_{i != i*} P[N(0,1) > (n_i* - n_i) / (sqrt(2) sigma)],  1 - 1/m ),
    mu2 = sigma sqrt(-log q), mu1 = mu2 + 1, eps_k = mu_k / sigma^2,
    RDP(l) <= min( l / sigma^2, 1/(l-1) log((1-q) A^(l-1) + q B^(l-1)) ),
    A = (1-q) / (1 - (e^eps2 q)^(1 - 1/mu2)),  B = e^eps1 / q^(1/(mu1-1)),

the second branch only where mu1 > l, mu2 > 1, -log q > eps2 and
log q <= (mu2-1) eps2 - mu2 (log(1 + 1/(mu1-1)) + log(1 + 1/(mu2-1))). log q = -inf gives 0.
Everything is computed from log q (it can be -600 and below). The threshold step uses the same bound with
q = min(p, 1-p), p = P[max(n) + N(0, sigma1^2) >= T], and sigma -> sqrt(2) sigma1.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import dp_accounting
import numpy as np
import scipy.special
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from espnet_pate.privacy.orders import as_orders
from espnet_pate.privacy.votes import as_histograms, plurality

__all__ = [
    "eps_gnmax_data_independent_exact",
    "eps_gnmax_data_independent_pld",
    "log1mexp",
    "log_pr_answered",
    "logq_gnmax",
    "rdp_data_dependent_gaussian",
    "rdp_gnmax",
    "rdp_gnmax_data_independent",
    "rdp_threshold",
    "rdp_threshold_data_independent",
    "theorem6_bound",
    "theorem6_valid",
    "total_rdp_gnmax",
    "total_rdp_threshold",
]


def log1mexp(x) -> np.ndarray:
    """log(1 - e^x) for x <= 0, accurate at both ends; log1mexp(0) = -inf."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x < -math.log(2.0), np.log1p(-np.exp(x)), np.log(-np.expm1(x)))


@functools.lru_cache(maxsize=256)
def _gaussian_rdp(noise_multiplier: float, orders: tuple) -> np.ndarray:
    accountant = rdp_privacy_accountant.RdpAccountant(orders=list(orders))
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
    curve = accountant.rdp
    curve.setflags(write=False)
    return curve


def _check_sigma(sigma: float, name: str = "sigma") -> float:
    sigma = float(sigma)
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"{name} must be a positive finite number, got {sigma}")
    return sigma


def rdp_gnmax_data_independent(sigma: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-query RDP curve l / sigma^2 of GNMax (Prop. 8): dp_accounting's Gaussian, multiplier sigma/sqrt(2)."""
    sigma = _check_sigma(sigma)
    return _gaussian_rdp(sigma / math.sqrt(2.0), tuple(as_orders(orders).tolist())).copy()


def rdp_threshold_data_independent(sigma1: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-query RDP curve l / (2 sigma1^2) of the threshold step: dp_accounting's Gaussian, multiplier sigma1."""
    sigma1 = _check_sigma(sigma1, "sigma1")
    return _gaussian_rdp(sigma1, tuple(as_orders(orders).tolist())).copy()


def logq_gnmax(votes, sigma: float) -> np.ndarray:
    """log of the union bound on P[GNMax answer != plurality] (Prop. 7): shape votes.shape[:-1]."""
    sigma = _check_sigma(sigma)
    shape = np.shape(votes)[:-1]
    n = as_histograms(votes)
    top = plurality(n)
    gaps = np.take_along_axis(n, top[..., None], axis=-1) - n
    log_sf = scipy.special.log_ndtr(-gaps / (math.sqrt(2.0) * sigma))  # log P[N(0,1) > gap/(sqrt(2) sigma)]
    np.put_along_axis(log_sf, top[..., None], -np.inf, axis=-1)
    m = n.shape[-1]
    cap = math.log(1.0 - 1.0 / m) if m > 1 else -np.inf
    with np.errstate(divide="ignore"):
        return np.minimum(scipy.special.logsumexp(log_sf, axis=-1), cap).reshape(shape)


def theorem6_bound(logq, sigma: float, orders) -> np.ndarray:
    """The second branch of the data-dependent bound, 1/(l-1) log((1-q) A^(l-1) + q B^(l-1)), evaluated in
    log space without its validity conditions (callers check them): shape logq.shape + (orders,)."""
    lq = np.asarray(logq, dtype=float)[..., None]
    lam = np.asarray(orders, dtype=float)
    variance = sigma * sigma
    with np.errstate(all="ignore"):
        mu2 = sigma * np.sqrt(-lq)
        mu1 = mu2 + 1.0
        eps1, eps2 = mu1 / variance, mu2 / variance
        log1q = log1mexp(lq)
        log_a = log1q - log1mexp((lq + eps2) * (1.0 - 1.0 / mu2))
        log_b = eps1 - lq / (mu1 - 1.0)
        return np.logaddexp(log1q + (lam - 1.0) * log_a, lq + (lam - 1.0) * log_b) / (lam - 1.0)


def theorem6_valid(logq, sigma: float, orders) -> np.ndarray:
    """Where ``theorem6_bound`` may be used: mu1 > l, mu2 > 1, -log q > eps2 and the Lemma 9 condition on q."""
    lq = np.asarray(logq, dtype=float)[..., None]
    lam = np.asarray(orders, dtype=float)
    with np.errstate(all="ignore"):
        mu2 = sigma * np.sqrt(-lq)
        mu1 = mu2 + 1.0
        eps2 = mu2 / (sigma * sigma)
        lemma9 = lq <= (mu2 - 1.0) * eps2 - mu2 * (np.log1p(1.0 / (mu1 - 1.0)) + np.log1p(1.0 / (mu2 - 1.0)))
        return np.isfinite(lq) & (mu1 > lam) & (mu2 > 1.0) & (-lq > eps2) & lemma9


def rdp_data_dependent_gaussian(logq, sigma: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Theorem 6 bound for Gaussian noisy max (module docstring); shape logq.shape + (orders,).

    ``sigma`` is GNMax's noise; for the threshold step pass sqrt(2) * sigma1.
    """
    sigma = _check_sigma(sigma)
    orders = as_orders(orders)
    logq = np.asarray(logq, dtype=float)
    if np.any(np.isnan(logq)) or np.any(logq > 0):
        raise ValueError("log q must be <= 0")
    flat, inverse = np.unique(logq.ravel(), return_inverse=True)
    data_independent = rdp_gnmax_data_independent(sigma, orders)[None, :]
    bound = theorem6_bound(flat, sigma, orders)
    out = np.where(theorem6_valid(flat, sigma, orders), np.minimum(data_independent, bound), data_independent)
    out = np.where(np.isneginf(flat)[:, None], 0.0, out)
    return out[inverse.ravel()].reshape(logq.shape + (orders.size,))


def rdp_gnmax(votes, sigma: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-query data-dependent RDP of GNMax: shape votes.shape[:-1] + (orders,)."""
    return rdp_data_dependent_gaussian(logq_gnmax(votes, sigma), sigma, orders)


def _sum_by_value(values: np.ndarray, curve_of_unique) -> np.ndarray:
    # Many queries share one histogram shape (unanimous steps): evaluate each distinct log q once.
    uniq, counts = np.unique(np.asarray(values, dtype=float).ravel(), return_counts=True)
    return counts.astype(float) @ curve_of_unique(uniq)


def total_rdp_gnmax(votes, sigma: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Sum over queries of the data-dependent GNMax RDP: one curve [orders]."""
    orders = as_orders(orders)
    if np.asarray(votes).size == 0:
        return np.zeros(orders.size)
    return _sum_by_value(logq_gnmax(votes, sigma), lambda lq: rdp_data_dependent_gaussian(lq, sigma, orders))


def log_pr_answered(votes, threshold: float, sigma1: float) -> np.ndarray:
    """log P[max(n) + N(0, sigma1^2) >= T]: shape votes.shape[:-1]. Uses the exact max (soft votes, and the
    interactive variant's n - M p_student, are not rounded)."""
    sigma1 = _check_sigma(sigma1, "sigma1")
    n = np.asarray(votes, dtype=float)
    return scipy.special.log_ndtr((n.max(axis=-1) - float(threshold)) / sigma1)


def rdp_threshold(log_pr: np.ndarray, sigma1: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Data-dependent RDP of the threshold step from log P[answered]: shape log_pr.shape + (orders,)."""
    log_pr = np.minimum(np.asarray(log_pr, dtype=float), 0.0)
    logq = np.minimum(log_pr, log1mexp(log_pr))
    return rdp_data_dependent_gaussian(logq, math.sqrt(2.0) * _check_sigma(sigma1, "sigma1"), orders)


def total_rdp_threshold(log_pr, sigma1: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    orders = as_orders(orders)
    if np.asarray(log_pr).size == 0:
        return np.zeros(orders.size)
    return _sum_by_value(log_pr, lambda lp: rdp_threshold(lp, sigma1, orders))


def eps_gnmax_data_independent_pld(sigma: float, queries: int, delta: float,
                                   value_discretization_interval: float = 1e-4) -> float:
    """Epsilon of Q data-independent GNMax queries by dp_accounting's PLD accountant (pessimistic, valid).

    Argmax is post-processing of the noised histogram, so Q queries are the Gaussian mechanism with noise
    multiplier sigma/sqrt(2) composed Q times. Seconds for large Q * eps; see the exact figure below.
    """
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=value_discretization_interval)
    accountant.compose(dp_accounting.GaussianDpEvent(_check_sigma(sigma) / math.sqrt(2.0)), int(queries))
    return float(accountant.get_epsilon(delta))


def eps_gnmax_data_independent_exact(sigma: float, queries: int, delta: float) -> float:
    """The same composition in closed form: Q Gaussians of multiplier s compose to one of multiplier s/sqrt(Q),
    whose exact (eps, delta) curve dp_accounting gives (Balle & Wang 2018). What the PLD figure converges to.
    """
    if queries <= 0:
        return 0.0
    return float(dp_accounting.get_epsilon_gaussian(_check_sigma(sigma) / math.sqrt(2.0 * queries), delta))

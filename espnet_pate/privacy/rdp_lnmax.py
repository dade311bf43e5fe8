"""RDP of LNMax (Laplace noisy max; Papernot et al. 2017, "Semi-supervised Knowledge Transfer ...").

LNMax adds Laplace noise of scale b = 1/gamma to every count and answers the argmax: pure (2 gamma)-DP per query.

Data-dependent (2017, Theorem 3 and Lemma 4; PRIVACY.md), with d_i = n_i* - n_i,

    q <= min( sum_{i != i*} (2 + gamma d_i) / (4 exp(gamma d_i)),  1 - 1/m ),
    alpha(l) = min( 2 gamma^2 l (l+1),  log((1-q) ((1-q)/(1 - e^(2 gamma) q))^l + q e^(2 gamma l)),  2 gamma l ),

the middle term only while q <= 1/(e^(2 gamma) + 1) (where Theorem 3 holds; the 2017 code's looser q < 1/2 is
not used). The moments accountant's alpha(l) is RDP at order l+1 times l: RDP(l+1) = alpha(l)/l, so LNMax
composes on the same RDP curve as everything else.

Data-independent: the noised histogram is two Laplace mechanisms of sensitivity 1 (one teacher moves one vote
out of one class into another), i.e. dp_accounting's LaplaceDpEvent with multiplier b composed twice; argmax is
post-processing. That curve is below the 2017 one (2 gamma^2 l(l+1) / l) everywhere; the per-query
data-dependent figure is the minimum of the two valid bounds.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import dp_accounting
import numpy as np
import scipy.special
from dp_accounting.rdp import rdp_privacy_accountant

from espnet_pate.privacy.orders import as_orders
from espnet_pate.privacy.rdp_gnmax import log1mexp
from espnet_pate.privacy.votes import as_histograms, plurality

__all__ = [
    "logq_lnmax",
    "pure_eps_lnmax",
    "rdp_lnmax",
    "rdp_lnmax_2017",
    "rdp_lnmax_data_independent",
    "rdp_lnmax_data_independent_2017",
    "total_rdp_lnmax",
]


def _gamma(laplace_scale: float) -> float:
    b = float(laplace_scale)
    if not b > 0 or not math.isfinite(b):
        raise ValueError(f"laplace_scale must be a positive finite number, got {laplace_scale}")
    return 1.0 / b


def pure_eps_lnmax(laplace_scale: float) -> float:
    """Per-query pure epsilon 2 gamma = 2/b (L1 sensitivity 2); every RDP curve here stays below it."""
    return 2.0 * _gamma(laplace_scale)


@functools.lru_cache(maxsize=256)
def _two_laplace_rdp(laplace_scale: float, orders: tuple) -> np.ndarray:
    accountant = rdp_privacy_accountant.RdpAccountant(orders=list(orders))
    accountant.compose(dp_accounting.LaplaceDpEvent(laplace_scale), 2)
    return accountant.rdp


def rdp_lnmax_data_independent(laplace_scale: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-query RDP curve of LNMax: two sensitivity-1 Laplace mechanisms of scale b (dp_accounting)."""
    _gamma(laplace_scale)
    return _two_laplace_rdp(float(laplace_scale), tuple(as_orders(orders).tolist())).copy()


def rdp_lnmax_data_independent_2017(laplace_scale: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """The 2017 paper's data-independent curve min(2 gamma^2 l, 2 gamma) at order l (for comparisons)."""
    gamma = _gamma(laplace_scale)
    orders = as_orders(orders)
    return np.minimum(2.0 * gamma * gamma * orders, 2.0 * gamma)


def logq_lnmax(votes, laplace_scale: float) -> np.ndarray:
    """log of the bound on P[LNMax answer != plurality] (2017, Lemma 4): shape votes.shape[:-1]."""
    gamma = _gamma(laplace_scale)
    shape = np.shape(votes)[:-1]
    n = as_histograms(votes)
    top = plurality(n)
    gd = gamma * (np.take_along_axis(n, top[..., None], axis=-1) - n)
    terms = np.log(2.0 + gd) - math.log(4.0) - gd
    np.put_along_axis(terms, top[..., None], -np.inf, axis=-1)
    m = n.shape[-1]
    cap = math.log(1.0 - 1.0 / m) if m > 1 else -np.inf
    with np.errstate(divide="ignore"):
        return np.minimum(scipy.special.logsumexp(terms, axis=-1), cap).reshape(shape)


def rdp_lnmax_2017(logq, laplace_scale: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """The 2017 data-dependent bound alpha(l)/l as RDP at order l+1: shape logq.shape + (orders,)."""
    gamma = _gamma(laplace_scale)
    eps = 2.0 * gamma
    orders = as_orders(orders)
    lq = np.asarray(logq, dtype=float)[..., None]
    lam = orders
    with np.errstate(all="ignore"):
        log1q = log1mexp(lq)
        log_t = np.logaddexp(log1q + (lam - 1.0) * (log1q - log1mexp(eps + lq)), lq + eps * (lam - 1.0))
        middle = np.where(lq <= -math.log1p(math.exp(eps)), log_t / (lam - 1.0), np.inf)
    out = np.minimum(np.minimum(0.5 * eps * eps * lam, middle), eps)
    return np.where(np.isneginf(lq), 0.0, out)


def rdp_lnmax(votes, laplace_scale: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-query data-dependent RDP of LNMax, min(2017 bound, two-Laplace curve): votes.shape[:-1] + (orders,)."""
    orders = as_orders(orders)
    dd = rdp_lnmax_2017(logq_lnmax(votes, laplace_scale), laplace_scale, orders)
    return np.minimum(dd, rdp_lnmax_data_independent(laplace_scale, orders))


def total_rdp_lnmax(votes, laplace_scale: float, orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """Sum over queries of the per-query data-dependent LNMax RDP: one curve [orders]."""
    orders = as_orders(orders)
    if np.asarray(votes).size == 0:
        return np.zeros(orders.size)
    uniq, counts = np.unique(logq_lnmax(votes, laplace_scale).ravel(), return_counts=True)
    curves = np.minimum(rdp_lnmax_2017(uniq, laplace_scale, orders), rdp_lnmax_data_independent(laplace_scale, orders))
    return counts.astype(float) @ curves

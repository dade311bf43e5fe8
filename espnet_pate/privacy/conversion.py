"""RDP curve -> (epsilon, delta), both conversions, each returning the order that attains the minimum.

* improved (what dp_accounting and opacus use; Balle et al. 2020, Prop. 12 / Asoodeh et al. 2020, eq. 20):
  ``eps = min_l RDP(l) + log((l-1)/l) - (log delta + log l)/(l-1)``; this is ``dp_accounting``'s
  ``compute_epsilon``, called as it is.
* classic (Mironov 2017, Prop. 3; the PATE 2017/2018 papers): ``eps = min_l RDP(l) + log(1/delta)/(l-1)``.
  Report it beside the improved figure when comparing with the literature.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from espnet_pate.privacy.orders import as_orders

__all__ = ["CONVERSIONS", "eps_classic", "eps_from_rdp", "eps_improved", "rdp_allowance"]

CONVERSIONS = ("improved", "classic")


def _check(rdp, delta: float, orders) -> Tuple[np.ndarray, np.ndarray]:
    orders = as_orders(orders)
    rdp = np.asarray(rdp, dtype=float)
    if rdp.shape != orders.shape:
        raise ValueError(f"RDP curve has shape {rdp.shape}, the order grid {orders.shape}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if np.any(np.isnan(rdp)) or np.any(rdp < 0):
        raise ValueError("an RDP curve must be non-negative and not NaN")
    return rdp, orders


def eps_improved(rdp: Sequence[float], delta: float, orders: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """(epsilon, order) by the improved conversion, computed by ``dp_accounting.rdp.compute_epsilon``."""
    rdp, orders = _check(rdp, delta, orders)
    eps, order = rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)
    return float(eps), float(order)


def eps_classic(rdp: Sequence[float], delta: float, orders: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """(epsilon, order) by the classic conversion ``min_l RDP(l) + log(1/delta)/(l-1)``; ties: lowest order."""
    rdp, orders = _check(rdp, delta, orders)
    eps = rdp + math.log(1.0 / delta) / (orders - 1.0)
    i = int(np.argmin(eps))
    return float(eps[i]), float(orders[i])


def eps_from_rdp(rdp, delta: float, orders=None, conversion: str = "improved") -> Tuple[float, float]:
    if conversion == "improved":
        return eps_improved(rdp, delta, orders)
    if conversion == "classic":
        return eps_classic(rdp, delta, orders)
    raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")


def rdp_allowance(eps: float, delta: float, orders: Optional[Sequence[float]] = None,
                  conversion: str = "improved") -> np.ndarray:
    """Per-order RDP allowance of a budget: a curve r is within (eps, delta) iff r(l) <= allowance(l) at some l.

    It is the conversion solved for RDP(l), so a budget check over many prefixes of queries is one vectorised
    comparison. (dp_accounting's KL-divergence shortcut, which only matters for eps near 0, is left out: the
    allowance can only be smaller, never larger, than what dp_accounting would accept.)
    """
    orders = as_orders(orders)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if conversion == "classic":
        return eps - math.log(1.0 / delta) / (orders - 1.0)
    if conversion != "improved":
        raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
    allowance = eps - np.log1p(-1.0 / orders) + (math.log(delta) + np.log(orders)) / (orders - 1.0)
    # dp_accounting treats orders <= 1.01 as unusable (infinite epsilon).
    return np.where(orders > 1.01, allowance, -np.inf)

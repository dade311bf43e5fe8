"""The privacy cost of a whole run of PATE queries: composed RDP curves and their (eps, delta) figures.

Per PRIVACY.md, RDP composes by adding curves on one order grid. Confident-GNMax is accounted on what actually
happened (realized accounting, Papernot et al. 2018, Section 4): every query pays the threshold step, only the
answered ones pay the GNMax step. Data-dependent curves (Papernot 2017/2018) depend on the sensitive votes:
report them beside the data-independent ones, and publish them only through smooth sensitivity
(smooth_sensitivity.py) or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np

from espnet_pate.privacy.conversion import eps_from_rdp
from espnet_pate.privacy.orders import as_orders, orders_id
from espnet_pate.privacy.rdp_gnmax import (
    eps_gnmax_data_independent_exact,
    log_pr_answered,
    rdp_gnmax_data_independent,
    rdp_threshold_data_independent,
    total_rdp_gnmax,
    total_rdp_threshold,
)
from espnet_pate.privacy.rdp_lnmax import rdp_lnmax_data_independent, total_rdp_lnmax
from espnet_pate.privacy.votes import as_histograms

__all__ = ["RunCost", "confident_gnmax_cost", "gnmax_cost", "lnmax_cost"]


@dataclass(frozen=True)
class RunCost:
    mechanism: str
    params: dict
    queries: int
    answered: int
    orders: np.ndarray = field(repr=False)
    rdp_data_dependent: np.ndarray = field(repr=False)
    rdp_data_independent: np.ndarray = field(repr=False)

    def eps(self, delta: float, data_dependent: bool = True, conversion: str = "improved") -> Tuple[float, float]:
        """(eps, order) of the composed curve."""
        curve = self.rdp_data_dependent if data_dependent else self.rdp_data_independent
        return eps_from_rdp(curve, delta, self.orders, conversion)

    def summary(self, delta: float) -> dict:
        """Every figure a report needs, named as PRIVACY.md asks (accountant, conversion, data dependence)."""
        eps, order = self.eps(delta)
        eps_c, order_c = self.eps(delta, conversion="classic")
        eps_di, order_di = self.eps(delta, data_dependent=False)
        eps_di_c, order_di_c = self.eps(delta, data_dependent=False, conversion="classic")
        out = {
            "mechanism": self.mechanism, **self.params, "queries": self.queries, "answered": self.answered,
            "delta": delta,
            "eps": eps, "order": order, "eps_classic": eps_c, "order_classic": order_c,
            "eps_data_independent": eps_di, "order_data_independent": order_di,
            "eps_data_independent_classic": eps_di_c, "order_data_independent_classic": order_di_c,
            "accountant": f"RDP on order grid {orders_id(self.orders)}; eps*: improved conversion (dp_accounting), "
                          "*_classic: min_l RDP(l) + log(1/delta)/(l-1)",
            "data_dependent": "eps, eps_classic are data-dependent (private; not released through smooth "
                              "sensitivity here); eps_data_independent* are not",
        }
        if self.mechanism == "gnmax":
            out["eps_data_independent_gaussian_exact"] = eps_gnmax_data_independent_exact(
                self.params["sigma"], self.queries, delta)
        return out


def _queries(votes) -> np.ndarray:
    n = as_histograms(votes)
    return n.reshape(-1, n.shape[-1])


def gnmax_cost(votes, sigma: float, orders: Optional[Sequence[float]] = None) -> RunCost:
    """All queries answered by GNMax(sigma)."""
    orders, n = as_orders(orders), _queries(votes)
    q = n.shape[0]
    return RunCost("gnmax", {"sigma": float(sigma)}, q, q, orders, total_rdp_gnmax(n, sigma, orders),
                   q * rdp_gnmax_data_independent(sigma, orders))


def lnmax_cost(votes, laplace_scale: float, orders: Optional[Sequence[float]] = None) -> RunCost:
    """All queries answered by LNMax(b)."""
    orders, n = as_orders(orders), _queries(votes)
    q = n.shape[0]
    return RunCost("lnmax", {"laplace_scale": float(laplace_scale)}, q, q, orders,
                   total_rdp_lnmax(n, laplace_scale, orders), q * rdp_lnmax_data_independent(laplace_scale, orders))


def confident_gnmax_cost(votes, answered, sigma1: float, threshold: float, sigma2: float,
                         orders: Optional[Sequence[float]] = None, screen=None) -> RunCost:
    """Realized Confident-GNMax cost: threshold step on every query, GNMax(sigma2) on the answered ones.

    ``answered``: bool mask over the queries. ``screen``: what the threshold looked at, when it is not the votes
    (Interactive-GNMax: n - M p_student).
    """
    orders, n = as_orders(orders), _queries(votes)
    mask = np.asarray(answered, dtype=bool).reshape(-1)
    if mask.size != n.shape[0]:
        raise ValueError(f"answered mask has {mask.size} entries for {n.shape[0]} queries")
    scr = n if screen is None else np.asarray(screen, dtype=float).reshape(n.shape)
    q, a = n.shape[0], int(mask.sum())
    dd = total_rdp_threshold(log_pr_answered(scr, threshold, sigma1), sigma1, orders) \
        + total_rdp_gnmax(n[mask], sigma2, orders)
    di = q * rdp_threshold_data_independent(sigma1, orders) + a * rdp_gnmax_data_independent(sigma2, orders)
    params = {"sigma1": float(sigma1), "threshold": float(threshold), "sigma2": float(sigma2)}
    return RunCost("confident_gnmax" if screen is None else "interactive_gnmax", params, q, a, orders, dd, di)

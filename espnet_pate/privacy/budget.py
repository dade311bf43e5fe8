"""A privacy budget that an aggregator consults so it stops answering once the budget is spent.

The budget keeps two composed RDP curves on one order grid, the data-dependent and the data-independent one,
and checks one of them (``basis``) against (eps, delta). A query runs only if the budget can pay its
worst-case cost given what the queries before it actually cost (for Confident-GNMax: the threshold step plus the
GNMax step, though only answered queries then pay the second). The first query that does not fit exhausts the
budget: it and every later query are refused, so the stopping point is one number.

The default ``basis="data_independent"`` makes the stopping point depend on public settings and on the outputs
of accounted mechanisms only: the one basis a release may stop on. ``basis="data_dependent"`` is for analysis
and simulation only: a stop on it makes the set of answered queries a function of the sensitive votes, which no
finite epsilon covers (PRIVACY.md, ground rules); stage 4 never uses it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from espnet_pate.privacy.conversion import eps_from_rdp, rdp_allowance
from espnet_pate.privacy.orders import as_orders

__all__ = ["BASES", "PrivacyBudget"]

BASES = ("data_dependent", "data_independent")


class PrivacyBudget:
    """(eps, delta) budget over RDP curves; ``admit`` decides how many of a batch of queries may run."""

    def __init__(self, eps: float, delta: float, orders: Optional[Sequence[float]] = None,
                 basis: str = "data_independent", conversion: str = "improved",
                 spent_data_dependent=None, spent_data_independent=None):
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps, self.delta, self.basis, self.conversion = float(eps), float(delta), basis, conversion
        self.orders = as_orders(orders)
        self._allowance = rdp_allowance(self.eps, self.delta, self.orders, conversion)
        def start(curve):
            return np.zeros(self.orders.size) if curve is None else np.array(curve, dtype=float)

        self.spent_data_dependent = start(spent_data_dependent)
        self.spent_data_independent = start(spent_data_independent)
        self.queries_run = 0
        self.exhausted = not self._fits(self._basis_curve())

    def _basis_curve(self) -> np.ndarray:
        return self.spent_data_dependent if self.basis == "data_dependent" else self.spent_data_independent

    def _fits(self, curves: np.ndarray) -> np.ndarray:
        return np.any(curves <= self._allowance, axis=-1)

    def admit(self, worst_dd, realized_dd, worst_di, realized_di) -> int:
        """Number k of leading queries that may run; spends their realized cost. Arrays: [queries, orders].

        Query j runs iff (cost of queries before it) + worst_j fits; the first that does not fit exhausts
        the budget. k = 0 once exhausted.
        """
        realized_dd, realized_di = np.atleast_2d(realized_dd), np.atleast_2d(realized_di)
        worst_dd, worst_di = np.atleast_2d(worst_dd), np.atleast_2d(worst_di)
        n = realized_dd.shape[0]
        if self.exhausted or n == 0:
            return 0
        realized, worst, spent = (realized_dd, worst_dd, self.spent_data_dependent) if self.basis == "data_dependent" \
            else (realized_di, worst_di, self.spent_data_independent)
        before = spent + np.concatenate([np.zeros((1, spent.size)), np.cumsum(realized, axis=0)[:-1]])
        ok = self._fits(before + worst)
        k = n if ok.all() else int(np.argmin(ok))
        self.spend(realized_dd[:k].sum(axis=0), realized_di[:k].sum(axis=0), k)
        if k < n:
            self.exhausted = True
        return k

    def spend(self, rdp_data_dependent, rdp_data_independent, queries: int = 0) -> None:
        """Add curves spent outside ``admit`` (e.g. a smooth-sensitivity release)."""
        self.spent_data_dependent = self.spent_data_dependent + np.asarray(rdp_data_dependent, float)
        self.spent_data_independent = self.spent_data_independent + np.asarray(rdp_data_independent, float)
        self.queries_run += int(queries)
        if not self._fits(self._basis_curve()):
            self.exhausted = True

    def spent_eps(self, data_dependent: Optional[bool] = None, conversion: Optional[str] = None) -> Tuple[float, float]:
        """(eps, order) spent so far at the budget's delta; default: the basis curve and the budget's conversion."""
        dd = self.basis == "data_dependent" if data_dependent is None else data_dependent
        curve = self.spent_data_dependent if dd else self.spent_data_independent
        return eps_from_rdp(curve, self.delta, self.orders, conversion or self.conversion)

    def __repr__(self) -> str:
        eps, order = self.spent_eps()
        return (f"PrivacyBudget(eps={self.eps}, delta={self.delta}, basis={self.basis!r}, spent_eps={eps:.4g} "
                f"at order {order:g}, queries_run={self.queries_run}, exhausted={self.exhausted})")

"""The one grid of Renyi orders every PATE curve in this project lives on.

RDP curves compose by adding them order by order, so all of them (per-query costs, ledger records, budgets)
must share one grid. The default is the grid of the PATE 2018 reference analysis
(``arange(2, 100.5, 0.5)`` then ``logspace(log10(100), log10(500), 100)``: 297 orders, 100 appears twice),
so figures computed here can be compared with the published ones.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

_DEFAULT = np.concatenate([np.arange(2, 100.5, 0.5), np.logspace(np.log10(100), np.log10(500), 100)])
_DEFAULT.setflags(write=False)

__all__ = ["DEFAULT_ORDERS", "as_orders", "orders_id"]

DEFAULT_ORDERS: np.ndarray = _DEFAULT


def as_orders(orders: Optional[Sequence[float]] = None) -> np.ndarray:
    """The orders as a 1-D float array (the default grid when None); every order must exceed 1."""
    out = DEFAULT_ORDERS if orders is None else np.atleast_1d(np.asarray(orders, dtype=float))
    if out.ndim != 1 or out.size == 0 or not np.all(out > 1) or not np.all(np.isfinite(out)):
        raise ValueError(f"Renyi orders must be a non-empty 1-D array of finite values > 1, got {orders!r}")
    return out


def orders_id(orders: Optional[Sequence[float]] = None) -> str:
    """A short, stable identifier of an order grid ("ref2018-297" for the default), recorded in the ledger."""
    arr = as_orders(orders)
    if arr is DEFAULT_ORDERS or (arr.shape == DEFAULT_ORDERS.shape and np.array_equal(arr, DEFAULT_ORDERS)):
        return f"ref2018-{DEFAULT_ORDERS.size}"
    digest = hashlib.sha256(np.ascontiguousarray(arr, dtype="<f8").tobytes()).hexdigest()[:16]
    return f"custom-{arr.size}-{digest}"

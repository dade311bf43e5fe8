"""Privacy cost of PATE vote aggregation over a file of vote histograms.

    python -m espnet_pate.bin.pate_analysis --votes VOTES.npy --mechanism {gnmax,lnmax,confident_gnmax}
        [--sigma S] [--sigma1 S1 --threshold T --sigma2 S2] [--laplace-scale B]
        [--answered-rows ROWS.json] [--queries N] --delta D [--seed SEED]
    python -m espnet_pate.bin.pate_analysis --mechanism plurality --sigma S --threshold T --queries Q --delta D
        [--accountant rdp|pld]

VOTES.npy holds one row of vote counts per query; ``--queries N`` keeps its first N rows. Prints one JSON
object with ``eps`` (data-dependent, improved conversion) and its ``order``, ``eps_classic`` / ``order_classic``,
``eps_data_independent`` (+ ``_classic``; for GNMax also the exact Gaussian-composition figure), ``answered``
and the settings. All RDP figures are on the reference order grid (espnet_pate.privacy.orders).

Confident-GNMax is accounted on the realized outcome of its threshold step. ``--answered-rows`` (a JSON list of
0-based row indices, within the first N rows) gives that outcome, as a run recorded it; that is the figure for
a real release. Without it the threshold step is simulated once here with noise from the operating system, or
from ``--seed`` for a reproducible figure (``not_for_release`` is then true): a plan, not the cost of labels
that were actually produced.

The data-dependent figures depend on the sensitive votes; they are not released through smooth sensitivity by
this tool (see espnet_pate.privacy.smooth_sensitivity).

The thresholded plurality of teacher transcripts (espnet_pate.privacy.plurality) needs no votes: every query asked
is paid, so its cost depends on the settings alone. Its JSON has ``eps`` (the total, eps_gaussian at
delta_G = D - Q beta plus Q log(1/(1-beta))), ``beta`` and the parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import numpy as np

from espnet_pate.privacy.accounting import confident_gnmax_cost, gnmax_cost, lnmax_cost
from espnet_pate.privacy.mechanisms import ConfidentGNMax
from espnet_pate.privacy.plurality import ACCOUNTANTS, plurality_cost

MECHANISMS = ("gnmax", "lnmax", "confident_gnmax", "plurality")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_pate.bin.pate_analysis",
                                description="PATE privacy accounting (data-dependent and data-independent RDP).")
    p.add_argument("--votes", help=".npy file: one row of vote counts per query (not for plurality)")
    p.add_argument("--mechanism", required=True, choices=MECHANISMS)
    p.add_argument("--sigma", type=float, help="GNMax noise standard deviation")
    p.add_argument("--sigma1", type=float, help="Confident-GNMax threshold noise standard deviation")
    p.add_argument("--threshold", type=float, help="Confident-GNMax or plurality threshold T")
    p.add_argument("--sigma2", type=float, help="Confident-GNMax answer noise standard deviation")
    p.add_argument("--laplace-scale", type=float, help="LNMax Laplace scale b = 1/gamma")
    p.add_argument("--answered-rows", help="JSON list of 0-based rows the threshold step answered")
    p.add_argument("--queries", type=int, help="use the first N rows only")
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--seed", type=int, help="seed for simulating the threshold step (not for release)")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp",
                   help="plurality: RDP (what the ledger composes) or the tighter PLD of its Gaussian part")
    return p


def _check_args(p: argparse.ArgumentParser, args) -> None:
    needs = {"gnmax": ["sigma"], "lnmax": ["laplace_scale"], "confident_gnmax": ["sigma1", "threshold", "sigma2"],
             "plurality": ["sigma", "threshold", "queries"]}
    for name in needs[args.mechanism]:
        if getattr(args, name) is None:
            p.error(f"--mechanism {args.mechanism} needs --{name.replace('_', '-')}")
    if (args.votes is None) != (args.mechanism == "plurality"):
        p.error("--votes is required, except for --mechanism plurality, which needs none")
    if args.mechanism != "plurality" and args.accountant != "rdp":
        p.error("--accountant applies to --mechanism plurality only")
    for name in {n for v in needs.values() for n in v} - set(needs[args.mechanism]) - {"queries"}:
        if getattr(args, name) is not None:
            p.error(f"--{name.replace('_', '-')} does not apply to --mechanism {args.mechanism}")
    if args.mechanism != "confident_gnmax" and (args.answered_rows is not None or args.seed is not None):
        p.error("--answered-rows and --seed apply to --mechanism confident_gnmax only")
    if args.answered_rows is not None and args.seed is not None:
        p.error("--seed simulates the threshold step; --answered-rows gives its outcome: use one")
    if args.queries is not None and args.queries < 1:
        p.error("--queries must be >= 1")


def _load_votes(path: str, queries: Optional[int]) -> np.ndarray:
    votes = np.load(path, allow_pickle=False)
    if votes.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array [queries, classes], got shape {votes.shape}")
    if queries is not None:
        if queries > votes.shape[0]:
            raise ValueError(f"--queries {queries} but {path} has {votes.shape[0]} rows")
        votes = votes[:queries]
    return votes.astype(float)


def _answered_mask(path: str, num_queries: int) -> np.ndarray:
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of integer row indices")
    if len(set(rows)) != len(rows) or any(not 0 <= r < num_queries for r in rows):
        raise ValueError(f"{path}: row indices must be distinct and within [0, {num_queries})")
    mask = np.zeros(num_queries, dtype=bool)
    mask[rows] = True
    return mask


def analyse(args) -> dict:
    if args.mechanism == "plurality":
        return plurality_cost(args.sigma, args.threshold, args.queries, args.delta, args.accountant).summary()
    votes = _load_votes(args.votes, args.queries)
    if args.mechanism == "gnmax":
        return gnmax_cost(votes, args.sigma).summary(args.delta)
    if args.mechanism == "lnmax":
        return lnmax_cost(votes, args.laplace_scale).summary(args.delta)
    extra = {}
    if args.answered_rows is not None:
        answered = _answered_mask(args.answered_rows, votes.shape[0])
        extra["answered_source"] = f"given: {args.answered_rows}"
    else:
        mechanism = ConfidentGNMax(args.sigma1, args.threshold, args.sigma2, seed=args.seed)
        answered = mechanism.passes_threshold(votes)
        extra["answered_source"] = "simulated here (one draw of the threshold step)"
        extra.update(seed=args.seed, not_for_release=mechanism.seed_fixed)
    cost = confident_gnmax_cost(votes, answered, args.sigma1, args.threshold, args.sigma2)
    return {**cost.summary(args.delta), **extra}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = get_parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    try:
        out = analyse(args)
    except (OSError, ValueError) as e:
        print(f"pate_analysis: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

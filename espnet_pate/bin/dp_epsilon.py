"""Epsilon of DP-SGD (Poisson-subsampled Gaussian composed over steps), or the noise for a target epsilon.

    python -m espnet_pate.bin.dp_epsilon --sample-rate Q --noise-multiplier S --steps N --delta D [--accountant {rdp,pld}]
    python -m espnet_pate.bin.dp_epsilon --sample-rate Q --target-eps E --steps N --delta D [--accountant {rdp,pld}]

Prints one JSON object on stdout. It always has ``eps`` (an upper bound, never above E when calibrating) and
``noise_multiplier``, plus the mechanism, neighbouring relation, privacy unit, accountant and delta.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from espnet_pate.dpsgd.accounting import ACCOUNTANTS, compute_epsilon_details
from espnet_pate.dpsgd.plan import noise_for_budget


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_pate.bin.dp_epsilon",
        description="DP-SGD privacy accounting (Poisson-subsampled Gaussian, dp_accounting RDP or PLD).",
    )
    p.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q per step")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--noise-multiplier", type=float, help="noise std / clipping norm")
    g.add_argument("--target-eps", type=float, help="calibrate the noise multiplier to this epsilon")
    p.add_argument("--steps", type=int, required=True, help="number of steps")
    p.add_argument("--delta", type=float, required=True, help="target delta")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        sigma = args.noise_multiplier
        if args.target_eps is not None:
            sigma, _ = noise_for_budget(args.sample_rate, args.steps, args.delta, args.accountant, args.target_eps)
        out = compute_epsilon_details(args.sample_rate, sigma, args.steps, args.delta, args.accountant)
        if args.target_eps is not None:
            if out["eps"] > args.target_eps:  # cannot happen: the calibration guarantees it
                raise RuntimeError(f"calibrated eps {out['eps']} above target {args.target_eps}")
            out["target_eps"] = args.target_eps
    except ValueError as e:
        print(f"dp_epsilon: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

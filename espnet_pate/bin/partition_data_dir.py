"""Split the sensitive Kaldi data directory into K disjoint teacher shards (recipe stage 3).

    python -m espnet_pate.bin.partition_data_dir SRC OUT --num-shards K [--unit speaker|utterance] [--seed 0]
        [--assignment greedy|hash] [--overwrite]

Writes OUT/shard_0 ... OUT/shard_{K-1} and OUT/manifest.json. A rerun with the same settings and source reuses
them; other settings are refused unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from espnet_pate.data.kaldi_dir import KaldiDirError
from espnet_pate.data.partition import ASSIGNMENTS, MANIFEST, PartitionError, partition_data_dir
from espnet_pate.privacy.units import PRIVACY_UNITS


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_pate.bin.partition_data_dir",
        description="Partition a Kaldi data directory into disjoint shards, one per PATE teacher.",
    )
    p.add_argument("src", help="source Kaldi data directory")
    p.add_argument("out", help="output directory for shard_<k>/ and manifest.json")
    p.add_argument("--num-shards", type=int, required=True, help="number of shards (teachers) K")
    p.add_argument("--unit", choices=PRIVACY_UNITS, default="speaker", help="what is kept whole inside one shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--assignment", choices=ASSIGNMENTS, default="hash",
                   help="greedy: balanced by utterance count; hash: each unit's shard depends on its id alone")
    p.add_argument("--overwrite", action="store_true", help="replace an existing partition made differently")
    return p


def _stamp(path: Path) -> Optional[tuple]:
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    before = _stamp(Path(args.out) / MANIFEST)
    try:
        manifest = partition_data_dir(args.src, args.out, args.num_shards, unit=args.unit, seed=args.seed,
                                      assignment=args.assignment, overwrite=args.overwrite)
    except (KaldiDirError, PartitionError) as e:
        print(f"partition_data_dir: error: {e}", file=sys.stderr)
        return 1
    sizes = [shard["num_utts"] for shard in manifest["shards"]]
    verb = "reused" if before is not None and _stamp(Path(args.out) / MANIFEST) == before else "wrote"
    print(f"{args.out}: {verb} {len(sizes)} {args.unit}-disjoint shards of {manifest['num_utts']} utterances "
          f"({min(sizes)}-{max(sizes)} per shard, seed {args.seed}, {args.assignment} assignment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

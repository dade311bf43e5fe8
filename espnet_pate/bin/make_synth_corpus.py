"""Build the default synthetic corpus (stage 1): Kaldi data directories under --out.

    python -m espnet_pate.bin.make_synth_corpus --config conf/corpus.yaml --out data/ [--nj 2] [--sets dev test]
"""
from __future__ import annotations

import argparse
import sys
import time

from espnet_pate.data.synth_corpus import SETS, corpus_stats, format_stats, load_config, prepare_synth_corpus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="conf/corpus.yaml", help="corpus YAML (sizes, speakers, seed)")
    parser.add_argument("--out", default="data", help="output folder for the data sets and their audio")
    parser.add_argument("--nj", type=int, default=2, help="synthesis jobs run at once")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), help="build only these sets (default: all)")
    args = parser.parse_args(argv)

    start = time.time()
    config = load_config(args.config)
    prepare_synth_corpus(config, args.out, nj=args.nj, sets=args.sets)
    print(format_stats(corpus_stats(args.out, args.sets)))
    print(f"[synth] finished in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

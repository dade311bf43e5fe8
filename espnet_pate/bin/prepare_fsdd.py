"""Build the FSDD connected-digit corpus (egs2/fsdd/pate1 stage 1): Kaldi data directories under --out.

    python -m espnet_pate.bin.prepare_fsdd --fsdd ../shared/data/fsdd --config egs2/fsdd/pate1/conf/corpus.yaml \
        --out egs2/fsdd/pate1/data
"""
from __future__ import annotations

import argparse
import sys
import time

from espnet_pate.data.fsdd import load_config, prepare_fsdd
from espnet_pate.data.synth_corpus import corpus_stats, format_stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fsdd", required=True, help="FSDD folder (its recordings/ folder, or the repository)")
    parser.add_argument("--config", required=True, help="corpus YAML (seed, held-out speakers, set sizes)")
    parser.add_argument("--out", required=True, help="output folder for the data sets and their audio")
    args = parser.parse_args(argv)
    start = time.time()
    prepare_fsdd(args.fsdd, load_config(args.config), args.out)
    print(format_stats(corpus_stats(args.out)))
    print(f"[fsdd] finished in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

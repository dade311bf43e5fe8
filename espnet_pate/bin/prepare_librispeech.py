"""Build the recipe's six Kaldi directories from LibriSpeech in its own layout (egs2/librispeech_100/pate1 stage 1).

    python -m espnet_pate.bin.prepare_librispeech --librispeech /data/LibriSpeech \
        --config egs2/librispeech_100/pate1/conf/corpus.yaml --out egs2/librispeech_100/pate1/data
"""
from __future__ import annotations

import argparse
import sys
import time

from espnet_pate.data.librispeech import load_config, prepare_librispeech


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--librispeech", required=True, help="the folder holding train-clean-100/, dev-clean/, ...")
    parser.add_argument("--config", required=True, help="corpus YAML (splits, speaker fractions, seed)")
    parser.add_argument("--out", required=True, help="output folder for the Kaldi directories")
    args = parser.parse_args(argv)
    start = time.time()
    prepare_librispeech(args.librispeech, load_config(args.config), args.out)
    print(f"[librispeech] finished in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

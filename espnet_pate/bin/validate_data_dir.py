"""Check a Kaldi data directory before training (recipe stage 2).

    python -m espnet_pate.bin.validate_data_dir DIR [--sample-rate 16000] [--no-text]

A good directory: exit status 0 and one summary line on stdout (utterances, speakers, hours).
A bad one: exit status 1 and the offending file:line on stderr. Nothing is ever written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from espnet_pate.data.kaldi_dir import KaldiDirError
from espnet_pate.data.validate import validate_data_dir


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_pate.bin.validate_data_dir",
        description="Validate a Kaldi data directory (wav.scp, utt2spk, spk2utt, text) and its audio headers.",
    )
    p.add_argument("data_dir", help="Kaldi data directory")
    p.add_argument("--sample-rate", type=int, default=16000, help="required sample rate of every audio file (Hz)")
    p.add_argument("--no-text", action="store_true", help="untranscribed directory: text is checked only if present")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        stats = validate_data_dir(args.data_dir, sample_rate=args.sample_rate, require_text=not args.no_text)
    except KaldiDirError as e:
        print(f"validate_data_dir: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.data_dir}: {stats.num_utts} utterances, {stats.num_speakers} speakers, {stats.hours:.3f} hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check a Kaldi data directory before training (recipe stage 2).

    python -m espnet_pate.bin.validate_data_dir DIR [--sample-rate 16000] [--no-text] [--token_list TOKENS]

A good directory: exit status 0 and one summary line on stdout (utterances, speakers, hours).
A bad one: exit status 1 and every problem on stderr, one `file:line: what` each, then a count. Nothing is
ever written. Transcripts are checked against --token_list (stage 2's public token list, once it exists) or,
without one, against the recipe's normalisation: lowercase a-z, apostrophe, single spaces.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from espnet_pate.data.validate import DataDirProblems, validate_data_dir


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m espnet_pate.bin.validate_data_dir",
        description="Validate a Kaldi data directory (wav.scp, utt2spk, spk2utt, text), its transcripts and audio.",
    )
    p.add_argument("data_dir", help="Kaldi data directory")
    p.add_argument("--sample-rate", type=int, default=16000, help="required sample rate of every audio file (Hz)")
    p.add_argument("--no-text", action="store_true", help="untranscribed directory: text is checked only if present")
    p.add_argument("--token_list", default=None,
                   help="ESPnet token list (tokens.txt from public data): transcripts may use only its characters "
                        "(default: lowercase a-z, apostrophe and single spaces)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.token_list is not None and not os.path.isfile(args.token_list):
        print(f"validate_data_dir: error: token list not found: {args.token_list}", file=sys.stderr)
        return 1
    try:
        stats = validate_data_dir(args.data_dir, sample_rate=args.sample_rate, require_text=not args.no_text,
                                  token_list=args.token_list)
    except DataDirProblems as e:
        print(e, file=sys.stderr)
        print(f"validate_data_dir: error: {len(e.problems)} problem(s) in {args.data_dir}", file=sys.stderr)
        return 1
    except ValueError as e:  # KaldiDirError (not a directory, unreadable file); a token list without characters
        print(f"validate_data_dir: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.data_dir}: {stats.num_utts} utterances, {stats.num_speakers} speakers, {stats.hours:.3f} hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())

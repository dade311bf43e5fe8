"""DP-SGD of the decoder and joint network over the frozen public encoder's cached outputs (recipe stage 6).

    python -m espnet_pate.bin.train_dpsgd_head --public exp/public_only --train data/sensitive --valid data/dev
        --out exp/dpsgd_head_eps8 --config conf/train_dpsgd_head.yaml --dp_target_epsilon 8
        [--dp_unit utterance|speaker] [--dp_ledger exp/privacy_ledger.jsonl] [--dp_seed N]
        [--dp_noise_multiplier S] [--model-file valid.loss.ave.pth]

The same part, plan, sampling and release as ``espnet_pate.bin.asr_transducer_dp_train`` with that config
(espnet_pate.dpsgd.head_trainer), with the encoder run once per utterance. Writes OUT as an ESPnet experiment
directory (config.yaml, valid.loss.ave.pth) with dp_report.json and privacy.json, records the model in the ledger,
then OUT/.done. A killed run resumes after its last finished epoch; a finished one is skipped.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from espnet_pate.bin.train_teacher_heads import keep_freed_memory
from espnet_pate.data.kaldi_dir import KaldiDirError
from espnet_pate.dpsgd.head_config import load_head_config
from espnet_pate.dpsgd.head_trainer import train_dpsgd_head
from espnet_pate.privacy.ledger import BudgetExceededError

PATHS = (("public", "public model's experiment directory (config.yaml + model)"),
         ("train", "sensitive Kaldi directory (wav.scp, text; utt2spk)"),
         ("valid", "held-out public Kaldi directory for model selection"),
         ("out", "output experiment directory"),
         ("config", "training YAML (conf/train_dpsgd_head.yaml)"))
OVERRIDES = ("dp_target_epsilon", "dp_noise_multiplier", "dp_unit", "dp_ledger", "dp_seed")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_pate.bin.train_dpsgd_head",
                                description="DP-SGD of the transducer head over cached public encoder outputs.")
    for name, what in PATHS:
        p.add_argument(f"--{name}", required=True, help=what)
    p.add_argument("--model-file", default="valid.loss.ave.pth", help="public model file in --public")
    for name in OVERRIDES:  # as the ESPnet DP trainer's options; "none" clears the YAML's value
        p.add_argument(f"--{name}", default=None, help=f"overrides the YAML's {name}")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    keep_freed_memory()
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if "dp_target_epsilon" in overrides and "dp_noise_multiplier" not in overrides:
        overrides["dp_noise_multiplier"] = None  # the command line's budget replaces the YAML's noise
    try:
        config = load_head_config(args.config, overrides)
        train_dpsgd_head(args.public, args.train, args.valid, args.out, config, model_file=args.model_file,
                         progress=lambda msg: print(msg, flush=True))
    except (KaldiDirError, FileNotFoundError, ValueError, BudgetExceededError) as e:
        print(f"train_dpsgd_head: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 9: pack a released system as a model-zoo zip with its privacy card (README.md and privacy_card.json).

    python -m espnet_pate.bin.pack_model exp/student_gnmax_eps8 --out exp/packed/student_gnmax_eps8.zip \
        --ledger exp/privacy_ledger.jsonl

The zip is made by ESPnet's own `espnet2.bin.pack asr`; `espnet_model_zoo`'s `ModelDownloader` unpacks it
offline and the stock `espnet2.bin.asr_transducer_inference.Speech2Text` loads it. Run from the recipe's folder
(the config's relative paths are read from there).

Exit code 2, nothing written: a system that may not be released (a teacher, no privacy.json, no finite or a
data-dependent epsilon, a fixed noise seed, a release missing from the ledger; the message says which). The
non-private fine-tune is refused too unless --allow-nonprivate, and its card then says "NO PRIVACY GUARANTEE".
"""
import argparse
import logging
import shlex
import sys
from pathlib import Path

from espnet_pate.asr.decode import MODEL_FILE
from espnet_pate.asr.model_pack import pack_experiment, read_experiment
from espnet_pate.report.privacy_card import CARD_FILE, PackRefused, card_json, card_markdown, privacy_card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system_dir", help="a trained experiment: config.yaml, the model file, privacy.json")
    p.add_argument("--out", required=True, help="the zip to write (replaced)")
    p.add_argument("--ledger", default="exp/privacy_ledger.jsonl",
                   help="the privacy ledger of the sensitive set the system was trained on (default: %(default)s)")
    p.add_argument("--model-file", default=MODEL_FILE)
    p.add_argument("--allow-nonprivate", action="store_true",
                   help="pack a model trained on sensitive data without a privacy guarantee; its card says so")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    command = shlex.join(["python", "-m", "espnet_pate.bin.pack_model", *(sys.argv[1:] if argv is None else argv)])
    config = read_experiment(a.system_dir, a.model_file)
    try:
        card = privacy_card(a.system_dir, config, a.ledger, a.model_file, a.allow_nonprivate, pack_command=command)
    except PackRefused as err:
        print(f"pack_model: refused: {err}", file=sys.stderr)
        return 2
    out = Path(a.out)
    pack_experiment(a.system_dir, out, a.model_file,
                    extra_files={"README.md": card_markdown(card, out.name), CARD_FILE: card_json(card)})
    logging.info("packed %s into %s (%s)", a.system_dir, out,
                 "privacy guarantee" if card["privacy_guarantee"] else "NO privacy guarantee")
    return 0


if __name__ == "__main__":
    sys.exit(main())

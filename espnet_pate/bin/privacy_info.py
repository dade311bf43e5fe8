"""Record a system's privacy claim in `exp/<system>/privacy.json` (read by stage 7's results table).

    python -m espnet_pate.bin.privacy_info exp/public_only --epsilon 0 --delta 0 --unit none --mechanism public_only
"""
import argparse

from espnet_pate.report.results import write_privacy_info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system_dir")
    p.add_argument("--epsilon", type=float, help="inf for no privacy; omit for a model that is not released")
    p.add_argument("--delta", type=float)
    p.add_argument("--unit", default="none", choices=["none", "utterance", "speaker"])
    p.add_argument("--mechanism", required=True)
    p.add_argument("--note", default=None)
    a = p.parse_args(argv)
    fields = {k: v for k, v in vars(a).items() if k != "system_dir" and v is not None}
    write_privacy_info(a.system_dir, **fields)


if __name__ == "__main__":
    main()

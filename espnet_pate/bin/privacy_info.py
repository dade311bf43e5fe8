"""Record a system's privacy claim in `exp/<system>/privacy.json` (read by stage 7's results table).

    python -m espnet_pate.bin.privacy_info exp/public_only --epsilon 0 --delta 0 --unit none --mechanism public_only
    python -m espnet_pate.bin.privacy_info exp/student_gnmax --inherit exp/pate_head_k40/gnmax \
        --public_data public_unlabeled   # the labels' claim, and the public audio they label
"""
import argparse

from espnet_pate.privacy.units import PRIVACY_UNITS
from espnet_pate.report.privacy_json import inherit_privacy_info, write_privacy_info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system_dir")
    p.add_argument("--inherit", metavar="DIR", help="copy the claim of DIR (the released labels a student learnt "
                   "from: post-processing), adding inherited_from; the other options are then not allowed")
    p.add_argument("--epsilon", type=float, help="inf for no privacy; omit for a model that is not released")
    p.add_argument("--delta", type=float)
    p.add_argument("--unit", default="none", choices=["none", *PRIVACY_UNITS])
    p.add_argument("--mechanism")
    p.add_argument("--note", default=None)
    p.add_argument("--public_data", help="with --inherit: the untranscribed public set whose audio the labels "
                   "transcribe (public_unlabeled: similar source, public_unlabeled_diff: a different one)")
    a = p.parse_args(argv)
    if a.inherit:
        if a.mechanism or a.epsilon is not None or a.delta is not None or a.note:
            p.error("--inherit takes the whole claim from DIR: give no --mechanism/--epsilon/--delta/--note")
        inherit_privacy_info(a.inherit, a.system_dir, **({"public_data": a.public_data} if a.public_data else {}))
        return
    if a.public_data:
        p.error("--public_data goes with --inherit (a student's labels)")
    if not a.mechanism:
        p.error("--mechanism is required (or --inherit DIR)")
    fields = {k: v for k, v in vars(a).items() if k not in ("system_dir", "inherit") and v is not None}
    write_privacy_info(a.system_dir, **fields)


if __name__ == "__main__":
    main()

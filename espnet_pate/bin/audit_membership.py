"""Membership inference (loss attack, offline LiRA) against every released model, at the utterance and speaker
levels, with the DP bound check (stage 8). Operator diagnostics: the results are statistics of sensitive data.

    python -m espnet_pate.bin.audit_membership --exp-root exp --members data/sensitive --nonmembers data/test \
        --shadow-models exp/shadow_teachers_head_k40 --out exp/audit/membership

Writes <out>/<system>.json per model; exits 3, naming each, when an attack beats a model's released claim beyond
its confidence interval (after every record is written).
"""
import argparse
import json
import sys
import time
from pathlib import Path

from espnet_pate.attacks.dp_bound import PrivacyBoundViolation
from espnet_pate.attacks.membership_audit import audit_model, checks_per_model, raise_on_violations
from espnet_pate.attacks.systems import audited_systems
from espnet_pate.data.kaldi_dir import numbered_dirs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-root", required=True, help="audit every released model directly under it")
    p.add_argument("--systems", nargs="*", help="audit these model directories instead")
    p.add_argument("--members", required=True, help="the sensitive training set (Kaldi directory)")
    p.add_argument("--nonmembers", required=True, help="held-out data of the same distribution, never trained or "
                   "selected on")
    p.add_argument("--shadow-models", required=True, help="a folder of teacher_<k> models trained on public data")
    p.add_argument("--out", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05, help="familywise error of the DP bound checks over every "
                   "model audited (Bonferroni): a correct claim stops the stage with at most this probability")
    a = p.parse_args(argv)
    shadows = numbered_dirs(a.shadow_models, "teacher_", " (run stage 3 with --shadow_teachers true)")
    systems = [Path(s) for s in a.systems] if a.systems else audited_systems(a.exp_root)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded, records = {}, []
    for system in systems:
        start = time.time()
        record = audit_model(system, shadows, a.members, a.nonmembers, out / "likelihoods", loaded,
                             reps=a.bootstrap, seed=a.seed, alpha=a.alpha,
                             family=checks_per_model() * len(systems))
        record["seconds"] = round(time.time() - start, 1)
        (out / f"{system.name}.json").write_text(json.dumps(record, indent=1) + "\n")
        records.append(record)
        best = max(record["results"], key=lambda r: r["auc"])
        print(f"{system}: highest AUC {best['auc']:.3f} ({best['attack']}, {best['unit']}), "
              f"{len(record['violations'])} violation(s), {record['seconds']} s", flush=True)
    try:
        raise_on_violations(records)
    except PrivacyBoundViolation as err:
        print(f"PRIVACY AUDIT FAILED:\n{err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
